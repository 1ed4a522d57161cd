"""Dilated causal convolution net (TCN) forecasting a synthetic hourly load series, SGD+momentum.

Why it is here: a held-out task for judging the tuning rules: none of them was designed or
tuned on it. It is the temporal convolutional network of Bai, Kolter & Koltun (2018, the
``locuslab/TCN`` code): residual blocks of two dilated causal convolutions with weight
normalisation and ReLU, the dilation doubling block after block, as WaveNet stacks them,
trained sequence to sequence (every position predicts the next value, as their polyphonic
music and language models are trained) on the mean squared error, with the convolutional
networks' standard SGD: lr 0.1, momentum 0.9 (He et al. 2016; PyTorch's ``examples/imagenet``),
without its weight decay. The series is what such a model is used for: hourly
electricity-style load with a daily and a weekly cycle under autocorrelated noise,
standardised as a careful user does. The only convolutional sequence model, the only one
with weight normalisation, and the only sequence-to-sequence regression.

* Model: ``LEVELS`` ``TemporalBlock``s of ``CHANNELS`` channels, kernel ``KERNEL``, dilations
  1, 2, 4, ..., no dropout (as the TCN code's adding-problem setting), a 1x1 convolution to
  match channels into the first block's residual and a per-step linear head; the TCN code's
  N(0, 0.01) initialisation of the 1x1 convolution and the head, torch's default elsewhere
  (the TCN code's N(0, 0.01) of the weight-normalised convolutions has no lasting effect
  there: the weight-norm hook recomputes the weight from its own parameters, which keep
  torch's default). Receptive field
  ``1 + 2 (KERNEL - 1) (2^LEVELS - 1)`` = 61 hours, two and a half days; the widths (16
  channels, four levels) are small because a CPU convolution costs about 0.5 ms however
  small it is, and a run must take seconds.
* Data: one series of ``LENGTH`` hours generated here from ``DATA_SEED`` (the same for every
  task seed): a daily profile (two harmonics of 24 h), a weekly cycle (weekends lower), a
  slow drift, and AR(1) noise (coefficient ``AR_COEF``, innovations ``NOISE``);
  standardised with the training part's mean and standard deviation; the last
  ``HELD_OUT_FRACTION`` held out. A sample is ``SEQ_LEN`` consecutive hours and the same
  window shifted by one; training windows start at random offsets drawn from the task's
  seed, in minibatches of ``BATCH_SIZE``.
* Optimiser: SGD, lr ``LR``, momentum ``MOMENTUM``, no weight decay, no schedule.
* Metric: ``eval_fn`` is the held-out one-step-ahead mean squared error over every position
  of ``EVAL_WINDOWS`` fixed, evenly spaced windows, in standardised units (repeating the
  last value scores 0.15; the AR(1) innovations alone, its floor, 0.082; a fitted run about
  0.105).
* Budget: ``STEPS`` optimizer steps, about 2 s of CPU time (one thread).
* Default clipper: global norm 1.0, the usual ``clip_grad_norm_(params, 1.0)``.

Checked with fixed thresholds only, no search (seed 0, held-out MSE after the full budget):
no clipping 0.1076; global norm 0.01: 0.1072, 0.1: 0.1041, 1: 0.1068, 10 and 100: 0.1076 (as
unclipped: the gradient's norm is 1.5 at the start and 0.1-0.4 later). Clipping matters
little here; the task is kept as a case where a rule should do no harm.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from autoclip.task import Task

LENGTH = 12_000  # hours, about 500 days
HELD_OUT_FRACTION = 0.2
AR_COEF = 0.8  # hour-to-hour persistence of the noise
NOISE = 0.6  # innovations' standard deviation in raw units (the raw series: 10 +- 2.1)
DATA_SEED = 2018  # the series never changes with the task seed
SEQ_LEN = 96  # four days: the later positions see a full receptive field
CHANNELS = 16
LEVELS = 4  # dilations 1, 2, 4, 8
KERNEL = 3
BATCH_SIZE = 16
LR = 0.1  # SGD's conv-net default (examples/imagenet)
MOMENTUM = 0.9
STEPS = 400
EVAL_WINDOWS = 64
TARGET_LOSS = 0.12  # training MSE in standardised units: below repeating the last value


@functools.cache
def series() -> torch.Tensor:
    """The standardised load series, ``[LENGTH]`` float32."""
    gen = torch.Generator().manual_seed(DATA_SEED)
    t = torch.arange(LENGTH, dtype=torch.float64)
    day = 2 * math.pi * t / 24
    daily = 2.0 * torch.sin(day - 2.0) + 0.8 * torch.sin(2 * day + 0.5)  # two daily peaks
    weekday = (t // 24) % 7
    weekly = torch.where(weekday >= 5, -1.5, 0.3)  # weekends lower
    drift = 1.0 * torch.sin(2 * math.pi * t / (24 * 180))  # a half-year swing
    e = torch.randn(LENGTH, generator=gen, dtype=torch.float64) * NOISE
    noise = torch.zeros(LENGTH, dtype=torch.float64)
    for i in range(1, LENGTH):
        noise[i] = AR_COEF * noise[i - 1] + e[i]
    y = 10.0 + daily + weekly + drift + noise
    cut = int(LENGTH * (1 - HELD_OUT_FRACTION))
    return ((y - y[:cut].mean()) / y[:cut].std()).float()


def _splits() -> tuple[torch.Tensor, torch.Tensor]:
    y = series()
    cut = int(LENGTH * (1 - HELD_OUT_FRACTION))
    return y[:cut], y[cut:]


def _windows(y: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs [N, 1, SEQ_LEN], next values [N, SEQ_LEN]) of windows starting at ``starts``."""
    w = y[starts[:, None] + torch.arange(SEQ_LEN + 1)]  # [N, T+1]
    return w[:, None, :-1].contiguous(), w[:, 1:].contiguous()


class TemporalBlock(nn.Module):
    """``relu(x + relu(conv2(relu(conv1(x)))))``: two dilated causal convolutions, each
    weight-normalised and left-padded so step ``t`` sees only steps ``<= t``."""

    def __init__(self, n_in: int, n_out: int, dilation: int) -> None:
        super().__init__()
        self.pad = (KERNEL - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(n_in, n_out, KERNEL, dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(n_out, n_out, KERNEL, dilation=dilation))
        self.downsample = nn.Conv1d(n_in, n_out, 1) if n_in != n_out else None
        if self.downsample is not None:
            nn.init.normal_(self.downsample.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(F.pad(x, (self.pad, 0))))  # [B, C, T]
        out = F.relu(self.conv2(F.pad(out, (self.pad, 0))))  # [B, C, T]
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(out + res)


class TCN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[TemporalBlock(1 if i == 0 else CHANNELS, CHANNELS, 2**i) for i in range(LEVELS)]
        )
        self.head = nn.Linear(CHANNELS, 1)
        nn.init.normal_(self.head.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(x)  # [B, C, T]
        return self.head(h.transpose(1, 2))[..., 0]  # [B, T]: the next value at every step


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch  # [B, 1, T], [B, T]
    return F.mse_loss(model(x), y)


def make_task(seed: int = 0) -> Task:
    """The TCN forecasting task; ``seed`` fixes the initial weights and the training windows."""
    y_train, y_test = _splits()
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(y_train) - SEQ_LEN, (STEPS, BATCH_SIZE), generator=gen)
    batches = [_windows(y_train, row) for row in starts]
    eval_starts = torch.linspace(0, len(y_test) - SEQ_LEN - 1, EVAL_WINDOWS).long()
    x_test, t_test = _windows(y_test, eval_starts)

    def eval_fn(model: nn.Module) -> float:
        with torch.no_grad():
            return _loss(model, (x_test, t_test)).item()

    return Task(
        model_fn=TCN,
        optimizer_fn=lambda params: torch.optim.SGD(params, lr=LR, momentum=MOMENTUM),
        loss_fn=_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="tcn_forecast",
        description=(__doc__ or "").splitlines()[0],
        target_loss=TARGET_LOSS,
        default_clipper={"name": "norm", "max_norm": 1.0},
    )
