"""What the framework callbacks share: the clipper's checkpoint entry, the suggestion."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from autoclip.clippers import BaseClipper, ClipResult, create_clipper
from autoclip.errors import ConfigError
from autoclip.propose import Proposal, suggest


def check_clipper(clipper: Any) -> BaseClipper | None:
    if clipper is not None and not isinstance(clipper, BaseClipper):
        raise ConfigError(
            "clipper must be an autoclip clipper (e.g. autoclip.create_clipper('norm', "
            f"max_norm=1.0)) or None to run autoclip.suggest first, but got {clipper!r}"
        )
    return clipper


def restore_clipper(clipper: BaseClipper | None, state: dict[str, Any]) -> BaseClipper:
    """Load a saved ``clipper.state_dict()``; with no clipper yet, rebuild it from its config
    (a run started with ``clipper=None`` resumes with the clipper its suggestion chose)."""
    if clipper is None:
        clipper = create_clipper(**state["config"])
    clipper.load_state_dict(state)
    return clipper


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def skip_on_host(result: ClipResult, params: list[torch.Tensor]) -> None:
    """Make a step the clipper skipped a true skip where that costs no sync.

    The clipper zeroed the gradients of a skipped step, but momentum, Adam's moments and
    weight decay would still move the weights. On the host, reading the decision is free, so
    the gradients are hidden (``p.grad = None``) for the step: every torch optimizer leaves a
    parameter without a gradient untouched. On an accelerator reading it would sync every
    step, so there a skipped step stays a zero-gradient step.
    """
    skip = getattr(result, "skipped", None)
    if skip is None:
        skip = ~result.finite
    if skip.device.type == "cpu" and bool(skip):
        for p in params:
            p.grad = None


class OnDevice:
    """Re-iterable view of a data loader whose batches go through ``move`` (to the device)."""

    def __init__(self, loader: Iterable[Any], move: Callable[[Any], Any]) -> None:
        self.loader = loader
        self.move = move

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield self.move(batch)


def run_suggest(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Iterable[Any],
    steps: int,
    suggest_kwargs: dict[str, Any],
) -> Proposal:
    """``autoclip.suggest(...)``: the model, optimizer and random state are left as they were."""
    return suggest(model, optimizer, loss_fn, batches, steps=steps, **suggest_kwargs)
