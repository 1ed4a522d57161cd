"""Multi-fidelity search: successive halving over trial lengths, judged on learning curves.

A bracket of ``n`` configurations trains together, one configuration at a time, each paused at
every rung (``steps / 9`` and ``steps / 3``) until all of the bracket has reached it; then the
best ``ceil(n / eta)`` continue and the others are pruned. Only the survivors of the last rung
(``finalists``: one) train for the full length, and only full-length trials are ever chosen. A
paused run is kept in memory and continued, not restarted, so a bracket of 9 with ``eta=3``
costs about 2.3 full runs (9 x 1/9 + 3 x 2/9 + 1 x 2/3) where 9 full-length trials cost 9.

Two finalists judged at full length would be better where the last rung misjudges, but they
do not fit in a quarter of a grid with the probe unless the first rung moves to a 27th of the
run, and there it ranks the initial descent, not the run: tried on all fourteen study tasks
(``studies/results/tune.md``, "Two finalists"), it was better on seven and far worse on three
(ar_forecast 2.9x the grid's best, where one finalist gives 1.2x). ``Plan`` takes any rungs
and finalists; ``studies/rung_study.py`` replays the shapes.

What a rung sees is the curve so far (the mean loss of every 10 steps) and the fraction of
steps the clipper clipped. It ranks on the curve's level (the mean of its last quarter), but a
short horizon cannot be trusted on its own, and the rule says how it is distrusted
(``studies/results/rung_study.md`` measures it on full-length runs of a threshold grid):

* Short horizons favour clipping that is too tight: early on a tight threshold gives a smooth,
  low curve, and a looser one overtakes only later (on the grid of the design tasks the best
  level at a third of the run was a tighter threshold than the best at full length in most
  runs; on relu_rnn the curves are flat for the first third whatever the threshold).
* A threshold that has seldom clipped so far is no clipping so far: its short-run curve says
  nothing of the spikes that come when the gradients grow (on the same grid, the thresholds
  that clipped under a tenth of the early steps ended worst).

So levels within ``TIE`` (20%) of the best are a tie, one that the horizon cannot separate,
and a tie is ordered by how the clippers acted: first those that clipped at least ``ACTIVE``
(half) of the steps, the one that clipped least first (the loosest that still acts), then
the others, the one that clipped most first (the nearest to acting). Then the rest, by
level. In Pareto mode the rest are ranked by non-dominated
sorting of (level, speed so far, instability so far), ties within a front by the distance to
the ideal point, as the final choice does (Optuna does not prune multi-objective studies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from autoclip.objectives import SPIKE_FACTOR

ETA = 3  # keep a third at each rung
RUNGS = (9, 3)  # rungs before full length: steps/9 and steps/3
FINALISTS = 1  # the last rung keeps a third, or this many where a third is fewer
SYNC = 10  # training.train reports the mean loss of every 10 steps; rungs fall on those points
TIE = 0.2  # levels within 20% of the best are a tie at a rung
ACTIVE = 0.5  # ... ordered by clipping: the loosest that clips half of the steps or more first


@dataclass(frozen=True)
class Plan:
    """Rung lengths (steps, ascending, full length excluded) and how many each rung keeps:
    a third at each rung (``eta``), but the last keeps ``finalists`` where a third is fewer.

    >>> plan = Plan.make(900)
    >>> plan.rungs, plan.keep(9), plan.cost(9)  # 9 x 100 + 3 x 200 + 1 x 600
    ((100, 300), [3, 1], 2100)
    >>> Plan.make(900, divisors=(27, 5), finalists=2).keep(9)  # two judged at full length
    [3, 2]
    """

    steps: int
    rungs: tuple[int, ...]
    eta: int = ETA
    finalists: int = FINALISTS

    @classmethod
    def make(cls, steps: int, divisors: Sequence[int] = RUNGS, finalists: int = FINALISTS) -> Plan:
        """Rungs at ``steps / d`` for each of ``divisors``, each at the nearest sync point
        (at least one); rungs that coincide are one, and none is at or past full length."""
        rungs = {max(1, round(steps / d / SYNC)) * SYNC for d in divisors}
        rungs = tuple(sorted(r for r in rungs if r < steps))
        return cls(steps=steps, rungs=rungs, finalists=finalists)

    def keep(self, n: int) -> list[int]:
        """How many of a bracket of ``n`` continue past each rung."""
        out = []
        for k in range(len(self.rungs)):
            third = max(1, math.ceil(n / self.eta))
            n = third if k < len(self.rungs) - 1 else min(n, max(third, self.finalists))
            out.append(n)
        return out

    def cost(self, n: int) -> int:
        """Optimizer steps of a bracket of ``n`` in which nothing diverges."""
        bounds = [0, *self.rungs, self.steps]
        alive = [n, *self.keep(n)]
        return sum(a * (hi - lo) for a, lo, hi in zip(alive, bounds, bounds[1:], strict=False))


class RungScore(NamedTuple):
    """What a rung ranks a configuration on: three partial objectives, all minimised (the
    curve's level, speed so far, instability so far), and the fraction of steps clipped."""

    loss: float
    speed: float
    instability: float
    clipped: float = 0.0

    @property
    def objectives(self) -> tuple[float, float, float]:
        return (self.loss, self.speed, self.instability)


def level(curve: Sequence[tuple[int, float]]) -> float:
    """The level of a partial curve of (step, loss) points: the mean of its last quarter
    (inf when the curve is empty or holds a non-finite loss)."""
    y = np.asarray([v for _, v in curve], dtype=float)
    if not len(y) or not np.all(np.isfinite(y)):
        return math.inf
    return float(np.mean(y[-max(1, len(y) // 4) :]))


def partial_objectives(curve: Sequence[tuple[int, float]], clipped: float = 0.0) -> RungScore:
    """The :class:`RungScore` of a partial curve whose clipper ``clipped`` that fraction of
    its steps."""
    if not curve:
        return RungScore(math.inf, 1.0, 1.0, clipped)
    y = np.asarray([v for _, v in curve], dtype=float)
    l0 = y[0] if np.isfinite(y[0]) and y[0] > 0 else math.inf
    speed = float(np.mean(np.minimum(np.nan_to_num(y / l0, nan=1.0), 1.0)))
    running = np.minimum.accumulate(y)
    spikes = float(np.mean(y[1:] > SPIKE_FACTOR * running[:-1])) if len(y) > 1 else 0.0
    return RungScore(level(curve), speed, spikes, float(clipped))


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
    scores: dict[int, RungScore], keep: int, pareto: bool
) -> tuple[list[int], dict[int, float]]:
    """The ``keep`` best of ``scores`` (id -> :class:`RungScore`) and each one's rank key.

    The tie of the module docstring comes first (the active clippers, loosest first, then
    the others, the nearest to acting first); the rest follow, by level in single mode, by
    non-dominated front and the distance to the ideal point in Pareto mode. Ids whose level
    is not finite (diverged) are never promoted.

    >>> scores = {0: RungScore(1.00, 0.5, 0.0, clipped=1.0),   # tight: clips every step
    ...           1: RungScore(1.05, 0.5, 0.0, clipped=0.6),   # tied, still clips 60%
    ...           2: RungScore(1.10, 0.5, 0.0, clipped=0.02),  # tied, but hardly clips
    ...           3: RungScore(2.00, 0.5, 0.0, clipped=0.5)}   # clearly worse
    >>> promote(scores, 4, pareto=False)[0]
    [1, 0, 2, 3]
    """
    ids = [i for i, v in scores.items() if math.isfinite(v[0])]
    if not ids:
        return [], {}
    pts = np.asarray([RungScore(*scores[i]).objectives for i in ids], dtype=float)
    if not pareto:
        key = {i: float(scores[i][0]) for i in ids}
    else:
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        norm = (pts - lo) / np.where(hi > lo, hi - lo, 1.0)
        ranks = nondominated_ranks(pts)
        dist = np.linalg.norm(norm, axis=1) / (1 + math.sqrt(pts.shape[1]))  # < 1
        key = {i: float(r) + float(d) for i, r, d in zip(ids, ranks, dist, strict=True)}
    best = min(scores[i][0] for i in ids)
    tied = [i for i in ids if scores[i][0] <= best + TIE * abs(best)]
    clipped = {i: RungScore(*scores[i]).clipped for i in ids}
    # equal fractions (every step clipped) say nothing of which is looser: the level decides
    lvl = {i: scores[i][0] for i in ids}
    active = sorted((i for i in tied if clipped[i] >= ACTIVE), key=lambda i: (clipped[i], lvl[i]))
    others = sorted((i for i in tied if i not in active), key=lambda i: (-clipped[i], lvl[i]))
    rest = sorted((i for i in ids if i not in tied), key=lambda i: (key[i], i))
    order = active + others + rest
    return order[:keep], key
