"""Variational autoencoder on scikit-learn's 8x8 digits, negative ELBO, SGD with momentum.

Why it is here: a held-out task for judging the tuning rules: none of them was designed or
tuned on it. It is the VAE of PyTorch's ``examples/vae`` (an MLP encoder to a Gaussian
posterior, the reparameterisation trick, a Bernoulli decoder, the loss summed over pixels)
shrunk to the 8x8 digits, trained with SGD and momentum 0.9 instead of Adam, as a user
moving an image recipe's optimiser over does. The loss is a sum over 64 pixels plus the KL
term, so its gradients are tens of times a per-pixel mean's, and SGD (unlike Adam) feels
their size: the threshold sets the step. The only generative and the only latent-variable
model among the bundled tasks, and the only one whose loss is itself noisy (a sampled
latent).

* Model: encoder ``64 -> HIDDEN -> 2 * LATENT`` (posterior mean and log-variance), decoder
  ``LATENT -> HIDDEN -> 64`` (pixel logits), ReLU; torch's default initialisation.
* Data: ``sklearn.datasets.load_digits`` (1,797 8x8 images, bundled with scikit-learn),
  pixels scaled to [0, 1] (grey levels as Bernoulli means, as ``examples/vae`` treats MNIST);
  a fixed stratified 80/20 split (the held-out part never changes with the seed). Minibatches
  of ``BATCH_SIZE``, reshuffled every epoch from the task's seed; the training latents are
  sampled from torch's generator, which the task's seed fixes.
* Optimiser: SGD, lr ``LR``, momentum 0.9, no weight decay, no schedule.
* Metric: ``eval_fn`` is the held-out negative ELBO in nats per image (reconstruction
  cross-entropy plus KL), averaged over ``N_EVAL_SAMPLES`` latent draws fixed by
  ``EVAL_SEED`` (so it is deterministic). Grey levels as Bernoulli means put a floor under
  it: their own entropy, 13.7 nats; the decoder that ignores the latent and outputs the
  training mean image scores 27.2; a fitted run about 24.6.
* Budget: ``STEPS`` optimizer steps (about 45 epochs), about 2 s of CPU time (one thread).
* Default clipper: global norm 1.0, the usual ``clip_grad_norm_(params, 1.0)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from autoclip.task import Task
from autoclip_studies._data import shuffled_batches

HIDDEN = 256
LATENT = 8
BATCH_SIZE = 64
LR = 1e-2
MOMENTUM = 0.9
STEPS = 1000  # each step is cheap (a batch of 64 images of 64 pixels): the budget is in steps
TARGET_LOSS = 26.0  # nats per image, clearly below the mean image's 27.2
N_EVAL_SAMPLES = 4
EVAL_SEED = 4321  # the held-out latent draws never change with the task seed
SPLIT_SEED = 0  # the train/held-out split is fixed, whatever the task seed


def _load() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data / 16.0, data.target, test_size=0.2, stratify=data.target, random_state=SPLIT_SEED
    )
    return (
        torch.tensor(x_train, dtype=torch.float32),  # [1437, 64] in [0, 1]
        torch.tensor(y_train, dtype=torch.long),  # [1437], unused by the loss
        torch.tensor(x_test, dtype=torch.float32),  # [360, 64]
        torch.tensor(y_test, dtype=torch.long),  # [360]
    )


class VAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * LATENT)
        )
        self.decoder = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 64))

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_var = self.encoder(x).chunk(2, dim=-1)  # [B, L], [B, L]
        if noise is None:
            noise = torch.randn_like(mean)  # the reparameterisation trick
        z = mean + torch.exp(0.5 * log_var) * noise  # [B, L]
        return self.decoder(z), mean, log_var  # logits [B, 64]


def _neg_elbo(model: nn.Module, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    logits, mean, log_var = model(x, noise)
    reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(-1)  # KL(q(z|x) || N(0, I))
    return (reconstruction + kl).mean()  # nats per image


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, _ = batch  # [B, 64], labels unused
    return _neg_elbo(model, x)


def make_task(seed: int = 0) -> Task:
    """The digits VAE task; ``seed`` fixes the initial weights, the batch order and the
    training latents."""
    x_train, y_train, x_test, _ = _load()
    batches = shuffled_batches(x_train, y_train, batch_size=BATCH_SIZE, steps=STEPS, seed=seed)
    gen = torch.Generator().manual_seed(EVAL_SEED)
    noise = torch.randn(N_EVAL_SAMPLES, len(x_test), LATENT, generator=gen)  # [S, 360, L]

    def eval_fn(model: nn.Module) -> float:
        with torch.no_grad():
            return sum(_neg_elbo(model, x_test, eps).item() for eps in noise) / N_EVAL_SAMPLES

    return Task(
        model_fn=VAE,
        optimizer_fn=lambda params: torch.optim.SGD(params, lr=LR, momentum=MOMENTUM),
        loss_fn=_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="vae_digits",
        description=(__doc__ or "").splitlines()[0],
        target_loss=TARGET_LOSS,
        default_clipper={"name": "norm", "max_norm": 1.0},
    )
