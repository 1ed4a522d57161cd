"""The one short training loop that the search and the studies share.

``train(task, clipper)`` builds the task's model and optimizer from its seed, trains for a
fixed number of steps with the clipper attached, and returns a :class:`TrainLog`. A run that
diverges ends early and says why; it never raises for that.

Divergence (the run stops at the first of these):

* the loss is NaN/inf;
* the gradient norm is NaN/inf and no clipper is there to skip the step (the weights would be
  poisoned), or ``max_skipped_in_row`` consecutive steps were skipped by the clipper;
* the loss exceeds ``explode_factor`` times the first loss.

Losses and norms are copied to the host every ``sync_every`` steps, not every step, so on an
accelerator the loop does not wait on each step; divergence is detected at those points.

The loop trains the way the task says the user trains: on ``task.device``, under
``task.autocast_dtype``, with a ``GradScaler`` when ``task.grad_scaler`` (the clipper is
attached to the optimizer, so it measures unscaled gradients, once per optimizer step, and a
step the scaler or the clipper skips changes nothing of the optimizer), and summing
``task.accumulation_steps`` micro-batches per step (the logged loss is their mean).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from autoclip import functional as F
from autoclip import serialize
from autoclip.clippers import BaseClipper, create_clipper
from autoclip.divergence import DivergenceCheck
from autoclip.errors import ConfigError
from autoclip.task import Task

__all__ = ["TrainLog", "train"]

# When a run has diverged: the one rule the probe shares (autoclip/divergence.py).


@dataclass(frozen=True)
class TrainLog:
    """Per-step record of one training run.

    ``thresholds`` is NaN where no clipper ran. ``clipped`` counts clipped steps.
    ``eval_loss`` is ``task.eval_fn(model)`` after training (None without one, or if diverged).

    >>> log = TrainLog(losses=(1.0, 0.5), norms=(2.0, 1.0), thresholds=(1.0, 1.0),
    ...                clipped=(True, False), planned_steps=2)
    >>> log.steps_run, log.clipped_fraction
    (2, 0.5)
    >>> TrainLog.from_dict(log.to_dict()) == log
    True
    """

    losses: tuple[float, ...]
    norms: tuple[float, ...]
    thresholds: tuple[float, ...]
    clipped: tuple[bool, ...]
    planned_steps: int
    diverged: bool = False
    reason: str | None = None
    eval_loss: float | None = None
    clipper: dict[str, Any] | None = None
    lr_scale: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_run(self) -> int:
        return len(self.losses)

    @property
    def clipped_fraction(self) -> float:
        return sum(self.clipped) / len(self.clipped) if self.clipped else 0.0

    def to_dict(self) -> dict[str, Any]:
        return serialize.to_plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainLog:
        return serialize.from_plain(cls, d)


def _as_clipper(clipper: BaseClipper | dict[str, Any] | None) -> BaseClipper | None:
    if clipper is None or isinstance(clipper, BaseClipper):
        return clipper
    return create_clipper(**clipper)


def train(
    task: Task,
    clipper: BaseClipper | dict[str, Any] | None = None,
    *,
    steps: int | None = None,
    seed: int | None = None,
    lr_scale: float = 1.0,
    callback: Callable[[int, float], None] | None = None,
    sync_every: int = 10,
) -> TrainLog:
    """Train ``task`` from scratch with ``clipper`` attached; return the log.

    Args:
        clipper: a clipper, a clipper config dict, or None for no clipping. A clipper object
            is used as given (warm-started state included).
        steps: optimizer steps (default ``task.steps``).
        seed: overrides ``task.seed`` for model init and data order.
        lr_scale: multiplies every parameter group's learning rate (for joint lr search).
        callback: ``(step, loss)`` called at each sync point with the mean loss of the steps
            since the previous one (a learning curve with the batch noise averaged), e.g. to
            report to an Optuna trial; it may raise (``optuna.TrialPruned``) to stop the run.

    >>> import torch
    >>> from autoclip import Task
    >>> x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    >>> task = Task(lambda: torch.nn.Linear(4, 1), lambda p: torch.optim.SGD(p, lr=0.1),
    ...             lambda model, batch: model(batch).pow(2).mean(), [x], steps=5)
    >>> log = train(task, {"name": "norm", "max_norm": 0.5})
    >>> log.steps_run, log.diverged, log.thresholds[0]
    (5, False, 0.5)
    >>> log.losses[-1] < log.losses[0]
    True
    """
    steps = task.steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"`steps` must be an int >= 1 (optimizer steps), but got {steps!r}")
    clip = _as_clipper(clipper)
    model, optimizer = task.build(seed)
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * lr_scale
    params = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()
    scaler = task.make_scaler()
    accum = task.accumulation_steps
    handle = None if clip is None else clip.attach(optimizer)

    losses: list[float] = []
    norms: list[float] = []
    thresholds: list[float] = []
    clipped: list[bool] = []
    pending: list[tuple[torch.Tensor, ...]] = []
    reason: str | None = None
    nan = torch.tensor(math.nan)
    inf = torch.tensor(math.inf)
    false, true = torch.tensor(False), torch.tensor(True)

    diverged = DivergenceCheck(skips_nonfinite=clip is not None or scaler is not None)

    def flush() -> str | None:
        if not pending:
            return None
        rows = torch.stack(
            [torch.stack([t.detach().double().cpu() for t in row]) for row in pending]
        ).tolist()
        pending.clear()
        for loss, norm, thr, was_clipped, finite, skipped in rows:
            step = len(losses)
            losses.append(loss)
            norms.append(norm)
            thresholds.append(thr)
            clipped.append(bool(was_clipped))
            # skipped: non-finite (skipped by the clipper or the scaler), or a skipped spike
            reason = diverged(step, loss, bool(finite), bool(skipped))
            if reason is not None:
                return reason
        return None

    stream = task.batch_stream()
    last_sync = 0
    try:
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            step_loss = None
            for _ in range(accum):
                loss = task.compute_loss(model, next(stream)) / accum
                (loss if scaler is None else scaler.scale(loss)).backward()
                step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
            if clip is None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                with torch.no_grad():
                    total = F.total_norm([p.grad for p in params if p.grad is not None])
                finite = torch.isfinite(total)
                row = (step_loss, total, nan, false, finite, ~finite)
            else:
                clip.last_result_ = None
                clip.observe_loss(step_loss)  # for a clipper's loss-spike guard (loss_z)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            if clip is not None:
                r = clip.last_result_
                if r is None:  # the scaler found inf/NaN and skipped the step (and the clipper)
                    row = (step_loss, inf, nan, false, false, true)
                else:
                    row = (step_loss, r.total_norm, r.threshold, r.clipped, r.finite, r.skipped)
            pending.append(row)
            if (step + 1) % sync_every == 0 or step == steps - 1:
                reason = flush()
                if reason is not None:
                    break
                if callback is not None:
                    window = losses[last_sync:]  # the steps since the previous sync point
                    callback(step, math.fsum(window) / len(window))
                last_sync = len(losses)
    finally:
        if handle is not None:
            handle.remove()

    eval_loss = None
    if reason is None and task.eval_fn is not None:
        model.eval()
        with torch.no_grad():
            eval_loss = float(task.eval_fn(model))
        if not math.isfinite(eval_loss):
            reason = f"non-finite evaluation loss ({eval_loss})"
            eval_loss = None
    return TrainLog(
        losses=tuple(losses),
        norms=tuple(norms),
        thresholds=tuple(thresholds),
        clipped=tuple(clipped),
        planned_steps=steps,
        diverged=reason is not None,
        reason=reason,
        eval_loss=eval_loss,
        clipper=None if clip is None else clip.config,
        lr_scale=lr_scale,
    )
