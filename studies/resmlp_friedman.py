"""Residual MLP with LayerNorm on Friedman #1 regression at its raw scale, Adagrad.

Why it is here: a held-out task for judging the tuning rules: none of them was designed or
tuned on it. It is the residual tabular network (pre-LayerNorm residual blocks, as in the
ResNet baseline of Gorishniy et al. 2021) fitted to targets left on their raw scale (values
around 14, spread about 5, as a user with prices or yields in their own units has them),
with Adagrad at lr ``LR``. Adagrad never forgets: its per-weight step is the lr over the root
of the *sum* of every squared gradient so far, so the large gradients of the first steps (the
output starts near 0, the targets near 14) shrink every later step for the rest of the run,
and a clipping threshold decides how much of that start it remembers. The only Adagrad task,
the only residual MLP, and the only one with LayerNorm outside a transformer.

* Model: ``nn.Linear(10, WIDTH)``, ``BLOCKS`` pre-LN residual blocks
  ``h + W2 relu(W1 LayerNorm(h))`` (hidden width ``2 * WIDTH``), a final LayerNorm and a
  linear head; torch's default initialisation.
* Data: ``sklearn.datasets.make_friedman1`` (generated in-process: 10 uniform features, five
  of them used, ``y = 10 sin(pi x0 x1) + 20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + noise``, noise
  standard deviation ``NOISE``) from ``DATA_SEED``, the same for every task seed; targets
  not standardised. ``N_TRAIN`` training and ``N_TEST`` held-out rows. Minibatches of
  ``BATCH_SIZE``, reshuffled every epoch from the task's seed.
* Optimiser: Adagrad, lr ``LR`` (ten times torch's default), torch's defaults otherwise (no
  initial accumulator, no lr decay, no weight decay).
* Metric: ``eval_fn`` is the held-out mean squared error in the target's units (the noise
  alone scores 1.0; predicting the training mean 22.9; a least-squares linear fit 7.9).
* Budget: ``STEPS`` optimizer steps (16 epochs), about 4.5 s of CPU time (one thread).
* Default clipper: global norm 1.0, the usual ``clip_grad_norm_(params, 1.0)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from autoclip.task import Task
from autoclip_studies._data import shuffled_batches

N_TRAIN = 4000
N_TEST = 1000
NOISE = 1.0  # the noise's standard deviation: the best possible held-out MSE is 1.0
WIDTH = 128
BLOCKS = 3
BATCH_SIZE = 64
LR = 0.1  # ten times torch.optim.Adagrad's default of 0.01
STEPS = 1000
TARGET_LOSS = 2.0  # within twice the noise floor: most of the signal is fitted
DATA_SEED = 7  # the data (and so the held-out rows) never change with the task seed


def _load() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(N_TRAIN + N_TEST, n_features=10, noise=NOISE, random_state=DATA_SEED)
    x = torch.tensor(x, dtype=torch.float32)  # [N, 10] in [0, 1]
    y = torch.tensor(y, dtype=torch.float32)  # [N], raw scale
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


class Block(nn.Module):
    """``h + fc2(relu(fc1(LayerNorm(h))))``: a pre-LN residual block."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.fc1 = nn.Linear(WIDTH, 2 * WIDTH)
        self.fc2 = nn.Linear(2 * WIDTH, WIDTH)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.relu(self.fc1(self.norm(h))))  # [B, WIDTH]


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(10, WIDTH),  # [B, WIDTH]
        *[Block() for _ in range(BLOCKS)],
        nn.LayerNorm(WIDTH),
        nn.Linear(WIDTH, 1),  # [B, 1]
        nn.Flatten(0),  # [B]
    )


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch  # [B, 10], [B]
    return F.mse_loss(model(x), y)


def make_task(seed: int = 0) -> Task:
    """The Friedman #1 task; ``seed`` fixes the initial weights and the batch order."""
    x_train, y_train, x_test, y_test = _load()
    batches = shuffled_batches(x_train, y_train, batch_size=BATCH_SIZE, steps=STEPS, seed=seed)

    def eval_fn(model: nn.Module) -> float:
        with torch.no_grad():
            return _loss(model, (x_test, y_test)).item()

    return Task(
        model_fn=_model,
        optimizer_fn=lambda params: torch.optim.Adagrad(params, lr=LR),
        loss_fn=_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="resmlp_friedman",
        description=(__doc__ or "").splitlines()[0],
        target_loss=TARGET_LOSS,
        default_clipper={"name": "norm", "max_norm": 1.0},
    )
