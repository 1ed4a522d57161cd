"""Heteroscedastic MLP (mean and log-variance heads) on Gaussian NLL with heavy-tailed noise, Adam.

Why it is here: a held-out task for judging the tuning rules: none of them was designed or
tuned on it. It is probabilistic regression as the deep-ensembles recipe writes it
(Lakshminarayanan et al. 2017: one network outputs a mean and a variance and is trained on
the Gaussian negative log-likelihood with Adam), on data whose noise has heavier tails than
the Gaussian the loss assumes, as sensor and financial data do. The NLL's gradient in the
mean is ``residual / variance``: where the predicted variance has shrunk, an outlier in the
batch makes a gradient spike (Seitzer et al. 2022 describe the same coupling). The only
probabilistic-output model and the only task whose loss learns its own scale.

* Model: an MLP ``N_FEATURES -> WIDTH -> WIDTH -> 2`` with ReLU; the two outputs are the mean
  and the log-variance, unconstrained (what a user who writes the heads gets); torch's
  default ``nn.Linear`` initialisation.
* Data: synthetic, generated here from ``DATA_SEED`` (the same for every task seed):
  ``N_FEATURES`` standard-normal features; the mean is ``sin(2 x0) + x1 x2 + x3^2 / 2``, the
  noise a Student-t with ``NOISE_DF`` degrees of freedom (infinite variance) scaled by
  ``exp(0.8 x4 - 0.7)`` (so its scale varies 23-fold over the central 95% of x4).
  Targets standardised with the training split's statistics; ``N_TRAIN`` training and
  ``N_TEST`` held-out rows. Minibatches of ``BATCH_SIZE``, reshuffled every epoch from the
  task's seed.
* Optimiser: Adam, lr ``LR`` (its default), betas (0.9, 0.999), no weight decay, no schedule.
* Metric: ``eval_fn`` is the held-out Gaussian NLL in nats per row, with its ``log(2 pi) / 2``
  constant (a standard normal, i.e. predicting the training mean and variance, scores about
  1.42; a fitted run about 0.65).
* Budget: ``STEPS`` optimizer steps (1.5 epochs), about 1.5 s of CPU time (one thread).
* Default clipper: global norm 1.0, the usual ``clip_grad_norm_(params, 1.0)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from autoclip.task import Task
from autoclip_studies._data import shuffled_batches

N_FEATURES = 8  # x0..x4 matter, x5..x7 are noise features
N_TRAIN = 16000
N_TEST = 4000
WIDTH = 128
BATCH_SIZE = 16  # small batches, so one outlier weighs on a step
LR = 1e-3  # Adam's default, as in the deep-ensembles recipe
STEPS = 1500
NOISE_DF = 2  # Student-t with 2 degrees of freedom: finite mean, infinite variance
TARGET_LOSS = 1.0  # training NLL well below a standard normal's 1.42
DATA_SEED = 1234  # the data (and so the held-out rows) never change with the task seed


def _make_data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, N_FEATURES, generator=gen)  # [n, F]
    mean = torch.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.5 * x[:, 3] ** 2  # [n]
    scale = torch.exp(0.8 * x[:, 4] - 0.7)  # [n]
    # Student-t: a normal over the root of a chi-square (a sum of NOISE_DF squared normals) / df
    normal = torch.randn(n, generator=gen)  # [n]
    chi2 = torch.randn(n, NOISE_DF, generator=gen).pow(2).sum(-1)  # [n]
    noise = normal / torch.sqrt(chi2 / NOISE_DF)  # [n]
    return x, mean + scale * noise


def _load() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = _make_data(N_TRAIN + N_TEST, torch.Generator().manual_seed(DATA_SEED))
    y = (y - y[:N_TRAIN].mean()) / y[:N_TRAIN].std()
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(N_FEATURES, WIDTH),
        nn.ReLU(),
        nn.Linear(WIDTH, WIDTH),
        nn.ReLU(),
        nn.Linear(WIDTH, 2),  # [B, 2]: mean, log-variance
    )


def _nll(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch  # [B, F], [B]
    mean, log_var = model(x).unbind(-1)  # [B], [B]
    nll = 0.5 * (log_var + (y - mean) ** 2 * torch.exp(-log_var) + math.log(2 * math.pi))
    return nll.mean()


def make_task(seed: int = 0) -> Task:
    """The heteroscedastic regression task; ``seed`` fixes the initial weights and the batch
    order."""
    x_train, y_train, x_test, y_test = _load()
    batches = shuffled_batches(x_train, y_train, batch_size=BATCH_SIZE, steps=STEPS, seed=seed)

    def eval_fn(model: nn.Module) -> float:
        with torch.no_grad():
            return _nll(model, (x_test, y_test)).item()

    return Task(
        model_fn=_model,
        optimizer_fn=lambda params: torch.optim.Adam(params, lr=LR),
        loss_fn=_nll,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="hetero_regression",
        description=(__doc__ or "").splitlines()[0],
        target_loss=TARGET_LOSS,
        default_clipper={"name": "norm", "max_norm": 1.0},
    )
