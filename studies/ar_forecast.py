"""LSTM forecaster of a synthetic autoregressive series on its raw scale (values in the tens).

Why it is here: the forecasting use case, as users often first write it: the series is fed to
the model on its own scale, not standardised, and the loss is the mean squared error in the
series' units. Gradients are then large (they grow with the scale of the errors) and the first
steps at a usual learning rate blow the model up; a norm clip turns the steps into bounded
ones, and the threshold that trains best has nothing to do with the conventional 1.0 or with
how big the warm-up's gradients are.

* Data: one long AR(2) series ``y_t = LEVEL + PHI1 (y_{t-1} - LEVEL) + PHI2 (y_{t-2} - LEVEL)
  + NOISE e_t`` (standard deviation about 15, mean ``LEVEL`` = 20), drawn once from a fixed
  generator (``DATA_SEED``), the last 20 % held out. A sample is ``WINDOW`` past values and
  the next one; the training windows are drawn at random offsets from the task's seed.
* Model: ``nn.LSTM(1, HIDDEN)`` over the window, a linear head on the last hidden state.
* Optimiser: SGD, lr ``LR``, momentum 0.9.
* Metric: ``eval_fn`` is the held-out mean squared error over ``EVAL_WINDOWS`` fixed windows,
  in the series' squared units (predicting the level alone scores the variance, about 220; the
  noise floor is ``NOISE**2`` = 25).
* Budget: ``STEPS`` optimizer steps, about 2 s of CPU time (one thread).
* Default clipper: global norm 1.0.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from autoclip.task import Task

LEVEL = 20.0
PHI1, PHI2 = 1.5, -0.75  # a damped oscillation (complex roots, modulus 0.87): forecastable
NOISE = 5.0
LENGTH = 20_000
DATA_SEED = 1234  # the series never changes with the task seed
WINDOW = 24
HIDDEN = 32
BATCH_SIZE = 32
LR = 1e-2  # SGD on raw-scale MSE: unclipped the early steps overshoot
MOMENTUM = 0.9
STEPS = 300
EVAL_WINDOWS = 500
TARGET_LOSS = 100.0


@functools.cache
def series() -> torch.Tensor:
    """The AR(2) series, ``[LENGTH]`` float32."""
    gen = torch.Generator().manual_seed(DATA_SEED)
    e = torch.randn(LENGTH + 100, generator=gen, dtype=torch.float64) * NOISE
    y = torch.zeros(LENGTH + 100, dtype=torch.float64)
    for t in range(2, LENGTH + 100):
        y[t] = PHI1 * y[t - 1] + PHI2 * y[t - 2] + e[t]
    return (y[100:] + LEVEL).float()  # drop the start-up from zero


def _windows(y: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + torch.arange(WINDOW + 1)  # [N, W+1]
    w = y[idx]
    return w[:, :WINDOW, None].contiguous(), w[:, WINDOW].contiguous()  # [N, W, 1], [N]


class Forecaster(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)  # [B, W, H]
        return self.head(out[:, -1]).squeeze(-1)  # [B]


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch  # [B, W, 1], [B]
    return nn.functional.mse_loss(model(x), y)


def make_task(seed: int = 0) -> Task:
    """The AR forecasting task; ``seed`` fixes the initial weights and the training windows."""
    y = series()
    cut = int(0.8 * len(y))
    train, held = y[:cut], y[cut:]
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(train) - WINDOW - 1, (STEPS, BATCH_SIZE), generator=gen)
    batches = [_windows(train, row) for row in starts]
    held_out = _windows(held, torch.linspace(0, len(held) - WINDOW - 2, EVAL_WINDOWS).long())

    def eval_fn(model: nn.Module) -> float:
        return _loss(model, held_out).item()

    return Task(
        model_fn=Forecaster,
        optimizer_fn=lambda params: torch.optim.SGD(params, lr=LR, momentum=MOMENTUM),
        loss_fn=_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="ar_forecast",
        description=(__doc__ or "").splitlines()[0],
        target_loss=TARGET_LOSS,
        default_clipper={"name": "norm", "max_norm": 1.0},
    )
