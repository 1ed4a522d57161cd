"""The caller's training objects, checked and read the same way by the warm-up and the races.

The optimizer's parameters, the batches (cycled from a re-iterable, read once from an
iterator) and the first loss (a scalar that requires grad): shared by :mod:`autoclip.probe`
and :mod:`autoclip.response`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from autoclip.errors import TaskError


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    """Batches forever from a re-iterable; an iterator is consumed once and then stops."""
    if isinstance(batches, Iterator):
        yield from batches
        return
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            return


def _check_loss(loss: Any) -> None:
    if not isinstance(loss, Tensor):
        raise TaskError(f"loss_fn must return a tensor, but returned {type(loss).__name__}")
    if loss.numel() != 1:
        raise TaskError(
            f"loss_fn must return a scalar, but returned shape {tuple(loss.shape)}; "
            "reduce it with .mean() or .sum()"
        )
    if not loss.requires_grad:
        raise TaskError(
            "loss_fn returned a loss that does not require grad; compute it from the model's "
            "output without torch.no_grad() or .detach()"
        )


def _backward(model, loss_fn, batch, params, optimizer, scaler, first: bool) -> Tensor:
    """One step's gradients, as the warm-up and the races take them: the grads cleared, the
    loss (checked on the ``first`` step) as a 0-d tensor, backward, and under a GradScaler
    unscaled (so that what is measured or clipped is the true gradient)."""
    for p in params:
        p.grad = None
    loss = loss_fn(model, batch)
    if first:
        _check_loss(loss)
    loss = loss.reshape(())
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    return loss


def _params_of(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The optimizer's parameters that require grad, each once, in group order."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TaskError(
            f"optimizer must be a torch.optim.Optimizer, but got {type(optimizer).__name__}"
        )
    params: list[Tensor] = []
    seen: set[int] = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    if not params:
        raise TaskError("the optimizer has no parameters that require grad")
    return params
