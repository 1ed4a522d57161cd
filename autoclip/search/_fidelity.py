"""Multi-fidelity search: successive halving over trial lengths, judged on learning curves.

A bracket of ``n`` configurations trains together, one configuration at a time, each paused at
every rung (``steps / eta**k`` for k = r..1) until all of the bracket has reached it; then the
best ``ceil(n / eta)`` continue and the others are pruned. Only the survivors of the last rung
train for the full length, and only full-length trials are ever chosen. A paused run is kept in
memory and continued, not restarted, so a bracket of 9 with ``eta=3`` costs about 2.3 full
runs (9 x 1/9 + 3 x 2/9 + 1 x 2/3) where 9 full-length trials cost 9.

Short horizons favour clipping that is too tight: early on, a tight threshold gives a smooth,
low curve, and a looser one spikes before it overtakes. Rungs therefore rank on a forecast of
the loss at full length, not on the loss at the rung: the curve's level (the median of the
rung's last quarter) carried forward along its trend (the slope of log loss against log step
over the rung's second half), with the trend's credit bounded to 20% of the level: a plateau
(what a too-tight threshold gives) must be 20% lower than a curve still falling to beat it,
while a level that is far worse is not rescued by a noisy slope. In
Pareto mode the rung ranks configurations by non-dominated sorting of (forecast loss, speed so
far, instability so far) — Optuna does not prune multi-objective studies — and breaks ties
within a front by the distance to the ideal point, as the final choice does.

The bias itself is countered where it is visible: a run whose clipper clipped at least 90% of
its steps so far (a threshold below the typical norm, which rescales every step and so acts as
a smaller, smoother learning rate early on) has its forecast raised by 25%, so it ranks ahead
of a looser threshold only when its lead is larger than what a short horizon gives tight
clipping for free. Forecasts within
5% of the best are a tie, which the study's order breaks: the measured recommendation was
enqueued first, the proposal's other candidates next, the sampler's points last (speed and
instability so far, which favour tight clipping too, do not break it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoclip.objectives import SPIKE_FACTOR

ETA = 3  # keep a third at each rung
RUNGS = 2  # rungs before full length: steps/9 and steps/3
SYNC = 10  # training.train reports a loss every 10 steps; rungs fall on those points
MIN_TREND_POINTS = 4  # fewer points in a rung's second half: batch noise, not a trend
TIGHT = 0.9  # a run clipped on 90% of its steps or more is "tight" at this horizon
TIGHT_PENALTY = 0.25  # ... and must forecast 25% better than a looser one to rank ahead
TIE = 0.05  # forecasts within 5% of the best are a tie at a rung
MAX_CREDIT = 0.2  # a falling curve's forecast is at most 20% below its level


@dataclass(frozen=True)
class Plan:
    """Rung lengths (steps, ascending, full length excluded) and how many each rung keeps."""

    steps: int
    rungs: tuple[int, ...]
    eta: int = ETA

    @classmethod
    def make(cls, steps: int, eta: int = ETA, n_rungs: int = RUNGS) -> Plan:
        rungs = set()
        for k in range(n_rungs, 0, -1):
            r = math.ceil(steps / eta**k / SYNC) * SYNC
            if r < steps:
                rungs.add(r)
        return cls(steps=steps, rungs=tuple(sorted(rungs)), eta=eta)

    def keep(self, n: int) -> list[int]:
        """How many of a bracket of ``n`` continue past each rung."""
        out = []
        for _ in self.rungs:
            n = max(1, math.ceil(n / self.eta))
            out.append(n)
        return out

    def cost(self, n: int) -> int:
        """Optimizer steps of a bracket of ``n`` in which nothing diverges."""
        bounds = [0, *self.rungs, self.steps]
        alive = [n, *self.keep(n)]
        return sum(a * (hi - lo) for a, lo, hi in zip(alive, bounds, bounds[1:], strict=False))


def forecast(curve: Sequence[tuple[int, float]], steps: int) -> float:
    """The loss at ``steps`` forecast from a partial curve of (step, loss) points."""
    if not curve:
        return math.inf
    t = np.asarray([s + 1 for s, _ in curve], dtype=float)
    y = np.asarray([v for _, v in curve], dtype=float)
    if not np.all(np.isfinite(y)):
        return math.inf
    level = float(np.median(y[-max(1, len(y) // 4) :]))
    half = len(y) // 2
    if level <= 0 or len(y) - half < MIN_TREND_POINTS or np.any(y[half:] <= 0):
        return level
    slope = float(np.polyfit(np.log(t[half:]), np.log(y[half:]), 1)[0])
    # The trend's credit is bounded: a few noisy points extrapolated over a long horizon
    # would otherwise rank on noise. A curve still falling may gain up to MAX_CREDIT on a
    # flat one; a rising curve is judged on its level.
    return level * max(min((steps / t[-1]) ** slope, 1.0), 1.0 - MAX_CREDIT)


def partial_objectives(
    curve: Sequence[tuple[int, float]], steps: int, clipped: float = 0.0
) -> tuple[float, ...]:
    """(forecast final loss, speed so far, instability so far) of a partial curve; a run
    that ``clipped`` at least TIGHT of its steps has its forecast raised by TIGHT_PENALTY."""
    if not curve:
        return (math.inf, 1.0, 1.0)
    y = np.asarray([v for _, v in curve], dtype=float)
    l0 = y[0] if np.isfinite(y[0]) and y[0] > 0 else math.inf
    speed = float(np.mean(np.minimum(np.nan_to_num(y / l0, nan=1.0), 1.0)))
    running = np.minimum.accumulate(y)
    spikes = float(np.mean(y[1:] > SPIKE_FACTOR * running[:-1])) if len(y) > 1 else 0.0
    penalty = 1.0 + TIGHT_PENALTY if clipped >= TIGHT else 1.0
    return (forecast(curve, steps) * penalty, speed, spikes)


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Front index of each row (0 = non-dominated), all objectives minimised."""
    n = len(points)
    ranks = np.full(n, -1)
    left = set(range(n))
    front = 0
    while left:
        current = [
            i
            for i in left
            if not any(
                np.all(points[j] <= points[i]) and np.any(points[j] < points[i])
                for j in left
                if j != i
            )
        ]
        for i in current:
            ranks[i] = front
            left.discard(i)
        front += 1
    return ranks


def promote(
    scores: dict[int, tuple[float, ...]], keep: int, pareto: bool
) -> tuple[list[int], dict[int, float]]:
    """The ``keep`` best of ``scores`` (id -> partial objectives) and each one's rank key.

    Single mode ranks on the forecast loss alone; Pareto mode by non-dominated front, then by
    the distance to the ideal point once each objective is scaled to [0, 1]. Ids whose
    forecast is not finite (diverged) are never promoted.
    """
    ids = [i for i, v in scores.items() if math.isfinite(v[0])]
    if not ids:
        return [], {}
    pts = np.asarray([scores[i] for i in ids], dtype=float)
    if not pareto:
        key = {i: float(scores[i][0]) for i in ids}
    else:
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        norm = (pts - lo) / np.where(hi > lo, hi - lo, 1.0)
        ranks = nondominated_ranks(pts)
        dist = np.linalg.norm(norm, axis=1) / (1 + math.sqrt(pts.shape[1]))  # < 1
        key = {i: float(r) + float(d) for i, r, d in zip(ids, ranks, dist, strict=True)}
    # Forecasts within TIE of the best are too close to call at a short horizon: among those
    # the study's own order decides (the measured recommendation first, then the proposal's
    # candidates, then the sampler's points). Not speed or instability so far: those favour
    # tight clipping at a short horizon just as the loss does.
    best = min(scores[i][0] for i in ids)
    tied = [i for i in ids if scores[i][0] <= best + TIE * abs(best)]
    rest = [i for i in ids if i not in tied]
    order = sorted(tied) + sorted(rest, key=lambda i: (key[i], i))
    return order[:keep], key
