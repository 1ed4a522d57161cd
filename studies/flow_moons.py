"""RealNVP normalising flow (affine coupling layers) on scikit-learn's two moons, summed NLL, Adam.

Why it is here: a held-out task for judging the tuning rules: none of them was designed or
tuned on it. It is the RealNVP of Karpathy's ``pytorch-normalizing-flows`` (after Dinh et al.
2017): nine affine coupling layers ``z1 = exp(s(x0)) * x1 + t(x0)`` alternating which half
is transformed, ``s`` and ``t`` from a 4-layer LeakyReLU MLP of width 24, a standard normal
prior, the negative log-likelihood *summed* over a batch of 128 points of
``make_moons(noise=0.05)``, Adam at lr 1e-4 with weight decay 1e-5 (that notebook's settings).
The scale is an unconstrained ``exp`` of a network output (no tanh), so a step that grows an
``s`` multiplies a point's contribution to the next gradient; the moons are thin (noise
0.05), so a fitted flow has sharp densities and steep log-likelihoods. The only normalising
flow and the only density model of continuous data; the loss is a sum, so its gradient
norms are in the hundreds where a mean's would be in the ones.

* Model: ``N_LAYERS`` ``AffineCoupling`` layers on 2-D points, parity alternating; each has one
  MLP ``1 -> HIDDEN -> HIDDEN -> HIDDEN -> 2`` with LeakyReLU(0.2) whose two outputs are ``s``
  and ``t`` (the notebook has a network for each; one for both, as much RealNVP code has
  it, halves the per-step cost, which small layers make overhead-bound); torch's default
  initialisation; prior N(0, I).
* Data: ``sklearn.datasets.make_moons`` (generated in-process) with noise ``NOISE``, on its
  own scale (x in [-1, 2], y in [-0.5, 1], as the notebook feeds it), from ``DATA_SEED``, the
  same for every task seed: ``N_TRAIN`` training and ``N_TEST`` held-out points (the
  notebook draws fresh points every step; a fixed training set is what a user with data has).
  Minibatches of ``BATCH_SIZE``, reshuffled every epoch from the task's seed.
* Optimiser: Adam, lr ``LR``, weight decay ``WEIGHT_DECAY`` (L2 in the gradient, torch's
  ``Adam``), betas (0.9, 0.999), no schedule.
* Metric: ``eval_fn`` is the held-out negative log-likelihood in nats per point (a Gaussian
  fitted to the training points scores 1.89; the N(0, I) prior itself 2.50; a fitted run
  about 1.2).
* Budget: ``STEPS`` optimizer steps (about 25 epochs), about 4.5 s of CPU time (one thread):
  nine layers' small matrix products and Adam's per-tensor updates, not arithmetic.
* Default clipper: global norm 1.0, the usual ``clip_grad_norm_(params, 1.0)``.

Checked with fixed thresholds only, no search (seed 0, held-out NLL after the full budget):
no clipping 1.1628; global norm 0.01: 1.2109, 0.1: 1.1967, 1: 1.1954, 10: 1.1954, 100: 1.1902.
The gradient's norm is about 450 at the start and 100-200 later, with spikes past 1,000 in
the second half, when the densities sharpen; under Adam a threshold changes the result by a
few per cent.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from autoclip.task import Task
from autoclip_studies._data import shuffled_batches

N_TRAIN = 5000
N_TEST = 2000
NOISE = 0.05  # the notebook's make_moons noise: thin moons, sharp densities
N_LAYERS = 9  # the notebook's RealNVP: nine AffineHalfFlow layers
HIDDEN = 24  # the notebook's nh
BATCH_SIZE = 128
LR = 1e-4  # the notebook's Adam settings
WEIGHT_DECAY = 1e-5
STEPS = 1000  # the notebook's 1,000 iterations
TARGET_LOSS = 1.5 * BATCH_SIZE  # summed NLL: 1.5 nats per point, well below a Gaussian's 1.89
DATA_SEED = 2017  # the data (and so the held-out points) never change with the task seed


def _load() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import make_moons

    x, moon = make_moons(N_TRAIN + N_TEST, noise=NOISE, random_state=DATA_SEED)
    x = torch.tensor(x, dtype=torch.float32)  # [N, 2]
    moon = torch.tensor(moon, dtype=torch.long)  # [N], which moon: unused by the loss
    return x[:N_TRAIN], moon[:N_TRAIN], x[N_TRAIN:], moon[N_TRAIN:]


def _mlp() -> nn.Module:
    """``x0 -> (s, t)``: one network for both."""
    return nn.Sequential(
        nn.Linear(1, HIDDEN),
        nn.LeakyReLU(0.2),
        nn.Linear(HIDDEN, HIDDEN),
        nn.LeakyReLU(0.2),
        nn.Linear(HIDDEN, HIDDEN),
        nn.LeakyReLU(0.2),
        nn.Linear(HIDDEN, 2),  # [B, 2]: s, t
    )


class AffineCoupling(nn.Module):
    """``z1 = exp(s(x0)) * x1 + t(x0)``, ``z0 = x0``; ``parity`` swaps which coordinate is x0.

    The log-determinant of the Jacobian is ``s(x0)``."""

    def __init__(self, parity: int) -> None:
        super().__init__()
        self.parity = parity
        self.net = _mlp()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0, x1 = x[:, :1], x[:, 1:]  # [B, 1], [B, 1]
        if self.parity:
            x0, x1 = x1, x0
        s, t = self.net(x0).chunk(2, dim=1)  # [B, 1] each; s unconstrained: the scale is exp(s)
        z1 = torch.exp(s) * x1 + t
        z = torch.cat([z1, x0] if self.parity else [x0, z1], dim=1)  # [B, 2]
        return z, s[:, 0]  # the point's log |det J|: [B]


class RealNVP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(AffineCoupling(parity=k % 2) for k in range(N_LAYERS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each point's log-likelihood under the flow, ``[B]``."""
        log_det = torch.zeros(len(x))
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        prior = -0.5 * x.pow(2).sum(-1) - math.log(2 * math.pi)  # log N(z; 0, I) in 2-D
        return prior + log_det


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, _ = batch  # [B, 2], moon labels unused
    return -model(x).sum()  # the notebook's loss = -torch.sum(logprob)


def make_task(seed: int = 0) -> Task:
    """The two-moons flow task; ``seed`` fixes the initial weights and the batch order."""
    x_train, moon_train, x_test, _ = _load()
    batches = shuffled_batches(x_train, moon_train, batch_size=BATCH_SIZE, steps=STEPS, seed=seed)

    def eval_fn(model: nn.Module) -> float:
        with torch.no_grad():
            return -model(x_test).mean().item()  # nats per point

    return Task(
        model_fn=RealNVP,
        optimizer_fn=lambda params: torch.optim.Adam(params, lr=LR, weight_decay=WEIGHT_DECAY),
        loss_fn=_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="flow_moons",
        description=(__doc__ or "").splitlines()[0],
        target_loss=TARGET_LOSS,
        default_clipper={"name": "norm", "max_norm": 1.0},
    )
