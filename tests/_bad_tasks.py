"""Broken tasks: each one is a mistake a user can make, for the CLI's error tests."""

import torch
from torch import nn

import autoclip


def _task(**kw):
    base = dict(
        model_fn=lambda: nn.Linear(2, 1),
        optimizer_fn=lambda p: torch.optim.SGD(p, lr=0.1),
        loss_fn=lambda m, b: m(b).mean(),
        batches=[torch.ones(4, 2)],
    )
    return autoclip.Task(**{**base, **kw})


def scalar():
    """The loss is not reduced to a scalar."""
    return _task(loss_fn=lambda m, b: m(b))


def frozen():
    """Nothing to train."""

    def model():
        m = nn.Linear(2, 1)
        m.requires_grad_(False)
        return m

    return _task(model_fn=model)


def empty():
    """No data."""
    return _task(batches=[])
