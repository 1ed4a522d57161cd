"""Tiny CPU tasks shared by the tests (also a `file.py:name` target for the CLI tests)."""

from __future__ import annotations

import torch
from torch import nn

import autoclip


def _data(seed: int, n: int = 64, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def _mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def make_task(lr: float = 0.05, steps: int = 30, seed: int = 0) -> autoclip.Task:
    """A small regression MLP that trains in well under a second."""
    held_out = _data(seed + 1)

    def eval_fn(model):
        return float(sum(_mse(model, b) for b in held_out) / len(held_out))

    return autoclip.Task(
        model_fn=lambda: nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)),
        optimizer_fn=lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9),
        loss_fn=_mse,
        batches=_data(seed),
        eval_fn=eval_fn,
        seed=seed,
        steps=steps,
        name="tiny",
        description="tiny regression MLP",
    )


def make_exploding_task(steps: int = 30) -> autoclip.Task:
    """The same model at a learning rate that diverges without clipping."""
    return make_task(lr=3.0, steps=steps)


def slow_task() -> autoclip.Task:
    """Trials that take a few seconds each, so a test can kill a worker mid-trial."""
    return make_task(steps=4000)


not_a_task = 42


def diverging_task() -> autoclip.Task:
    """The regression MLP whose loss turns NaN after the first 5 steps (the probe's, at
    ``--probe-steps 5``): every trial diverges at its first step, whatever it clips."""
    import dataclasses
    import math

    base = make_task(steps=20)
    calls = [0]

    def loss_fn(model, batch):
        calls[0] += 1
        loss = base.loss_fn(model, batch)
        return loss * math.nan if calls[0] > 5 else loss

    return dataclasses.replace(base, loss_fn=loss_fn)
