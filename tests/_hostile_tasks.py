"""Tasks that go wrong at run time, each in one way a user can cause (tests/test_hostile.py)."""

import torch
from torch import nn

import autoclip


def _task(**kw):
    base = dict(
        model_fn=lambda: nn.Linear(2, 1),
        optimizer_fn=lambda p: torch.optim.SGD(p, lr=0.1),
        loss_fn=lambda m, b: m(b).pow(2).mean(),
        batches=[torch.ones(4, 2)],
        steps=6,
    )
    return autoclip.Task(**{**base, **kw})


def nan_loss():
    return _task(loss_fn=lambda m, b: m(b).mean() * float("nan"))


def foreign_optimizer():
    other = nn.Linear(2, 1)
    return _task(optimizer_fn=lambda p: torch.optim.SGD(other.parameters(), lr=0.1))


def model_instance():
    return _task(model_fn=nn.Linear(2, 1))


def interrupt():
    """Ctrl-C in the middle of the second trial (the probe takes 5 steps, a trial 6)."""
    calls = [0]

    def loss(m, b):
        calls[0] += 1
        if calls[0] > 12:
            raise KeyboardInterrupt
        return m(b).pow(2).mean()

    return _task(loss_fn=loss)


def criterion_as_loss():
    return _task(loss_fn=nn.MSELoss())


def syntax_error_at_runtime():
    raise RuntimeError("the user's make_task failed")
