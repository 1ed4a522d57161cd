"""Objectives computed from a :class:`~autoclip.training.TrainLog`: pure functions.

All three are "lower is better" and comparable across trials of one task:

* :func:`final_loss` — the task's evaluation loss when it has an ``eval_fn``; otherwise the
  median of the last 10% of training losses (robust to one noisy batch). A diverged run
  scores the loss of the untrained model (``losses[0]``): no better than not training.
* :func:`convergence_speed` — normalised area under the training-loss curve:
  ``mean_t min(loss_t / loss_0, 1)`` over the *planned* steps, where steps after a divergence
  count as 1. 0 would be "reached zero loss at once", 1 "never went below the start".
* :func:`instability` — 1.0 for a diverged run; otherwise the fraction of steps that are loss
  spikes: a loss more than ``SPIKE_FACTOR`` times the median of the previous ``SPIKE_WINDOW``
  losses *and* above that median by more than ``SPIKE_MIN_JUMP`` of the initial loss (so the
  ordinary batch-to-batch noise of a nearly converged run, 0.02 then 0.05, is no spike).

>>> from autoclip import TrainLog, objectives
>>> log = TrainLog(losses=(1.0, 0.5, 0.25, 0.25), norms=(1.0,) * 4, thresholds=(1.0,) * 4,
...                clipped=(False,) * 4, planned_steps=4)
>>> objectives.convergence_speed(log)  # mean of 1, 0.5, 0.25, 0.25
0.5
>>> objectives.evaluate(log).instability
0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autoclip.training import TrainLog

__all__ = [
    "Objectives",
    "convergence_speed",
    "evaluate",
    "final_loss",
    "instability",
    "loss_spikes",
    "steps_to_target",
]

TAIL_FRACTION = 0.1  # the "end of training" whose median is the final training loss
SPIKE_WINDOW = 20  # previous losses a spike is measured against
SPIKE_FACTOR = 2.0  # a spike at least doubles the recent median loss
SPIKE_MIN_JUMP = 0.05  # ... and adds at least 5% of the initial loss to it
NAMES = ("final_loss", "speed", "instability")


@dataclass(frozen=True)
class Objectives:
    """The three objectives of one run, in the order the Pareto search minimises them."""

    final_loss: float
    speed: float
    instability: float

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.final_loss, self.speed, self.instability)


def _initial_loss(log: TrainLog) -> float:
    first = log.losses[0] if log.losses else math.nan
    return first if math.isfinite(first) else math.inf


def final_loss(log: TrainLog) -> float:
    if log.diverged or not log.losses:
        return _initial_loss(log)
    if log.eval_loss is not None:
        return float(log.eval_loss)
    n = max(1, math.ceil(TAIL_FRACTION * len(log.losses)))
    return float(np.median(log.losses[-n:]))


def convergence_speed(log: TrainLog) -> float:
    l0 = _initial_loss(log)
    if not math.isfinite(l0) or l0 <= 0:
        return 1.0
    curve = np.minimum(np.nan_to_num(np.asarray(log.losses) / l0, nan=1.0), 1.0)
    padded = np.ones(max(log.planned_steps, len(curve)))
    padded[: len(curve)] = curve
    return float(padded.mean())


def loss_spikes(losses: tuple[float, ...] | list[float]) -> list[int]:
    """Steps whose loss exceeds ``SPIKE_FACTOR`` x the median of the previous window and
    that median plus ``SPIKE_MIN_JUMP`` x the first loss."""
    x = np.asarray(losses, dtype=float)
    if len(x) <= SPIKE_WINDOW:
        return []
    min_jump = SPIKE_MIN_JUMP * abs(x[0]) if np.isfinite(x[0]) else 0.0
    spikes = []
    for t in range(SPIKE_WINDOW, len(x)):
        recent = np.median(x[t - SPIKE_WINDOW : t])
        if x[t] > SPIKE_FACTOR * recent and x[t] - recent > min_jump:
            spikes.append(t)
    return spikes


def instability(log: TrainLog) -> float:
    if log.diverged or not log.losses:
        return 1.0
    return len(loss_spikes(log.losses)) / len(log.losses)


def steps_to_target(log: TrainLog, target: float | None) -> int | None:
    """First step whose loss is at or below ``target`` (None if never, or no target)."""
    if target is None:
        return None
    for t, loss in enumerate(log.losses):
        if loss <= target:
            return t
    return None


def evaluate(log: TrainLog) -> Objectives:
    return Objectives(final_loss(log), convergence_speed(log), instability(log))
