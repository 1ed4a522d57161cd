"""How training responds to the threshold: short races of candidate ``max_norm`` values.

Where most steps are clipped, a norm clip makes the update ``lr * c * g / ||g||``: the threshold
``c`` acts as a step size, and the stable one depends on the loss surface and the learning
rate, not on how large unclipped gradients happen to be. So it is measured, the way
Lightning's ``lr_find`` measures a learning rate: by how the loss responds.

``measure_response(model, optimizer, loss_fn, batches, anchor)`` races ``CANDIDATES``
thresholds, half a decade apart, from ``anchor / 10**2`` to ``anchor * 10**0.5`` (``anchor``
is the typical warm-up norm, so the ladder spans "every step clipped hard" to "only spikes
clipped"). Each race

* starts from the caller's state (a :class:`autoclip._snapshot._Snapshot` taken once and
  restored before every race, RNG included), so every candidate sees the same initial
  weights, the same batches and the same dropout masks: their loss curves differ only
  through the threshold;
* trains ``race_steps`` steps, clipped at its threshold *from the first step*, so a model
  that blows up unclipped is measured under control instead of giving up;
* stops early when it diverges (a NaN/inf loss, ten non-finite gradients in a row:
  :mod:`autoclip.divergence`'s rule; or a loss that stays above ``DIVERGE_FACTOR`` x the
  first one: the median of the last ``DIVERGE_WINDOW`` steps, so that one outlier batch is
  a spike, not a divergence).

Scoring. A race scores the median training loss of its last quarter (lower is better; the
batches are the same for every candidate); a loss spike (a loss above twice the median of
the previous ``SPIKE_WINDOW`` steps, and above it by 5 % of the first loss) adds
``SPIKE_PENALTY`` x its excess; a diverged race scores +inf. Races whose score is within
``TIE`` of the best one's (5 % of the progress it made, and at most 5 % of its loss level)
are ties, and among ties the choice is the one nearest the anchor: where the races show no
difference, nothing argues for moving away from the typical norm. (A first version sent
ties to the smallest threshold, on the ``lr_find`` argument that short races favour big
steps; under Adam, where the threshold hardly changes a short race, that picked thresholds
1000x below the typical norm and lost on lstm_adding: ``studies/results/suggest_round1.md``.)
When the lowest candidate wins, or every race diverges,
the ladder is extended one rung down (every race diverged: a decade down, again, while the
budget lasts; a diverged race stops within a few steps); then one more race halfway (in log)
between the choice and the rung below it refines the answer to a factor of 10**0.25 = 1.8.

Afterwards the caller's model, optimizer, ``GradScaler`` and random state are restored bit
for bit, whatever happened in the races.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from autoclip._curve import ResponseCurve, _fmt
from autoclip._inputs import _backward, _cycle, _params_of
from autoclip._snapshot import _Snapshot
from autoclip.clippers import NormClip
from autoclip.divergence import DivergenceCheck
from autoclip.errors import ConfigError, TaskError

__all__ = ["ResponseCurve", "ladder", "measure_response"]

# Six rungs half a decade apart span 2.5 decades: anchor/100 (nearly normalised-gradient
# descent with a small step) to anchor*3.16 (only spikes clipped).
CANDIDATES = 6
LOW_EXPONENT = -4  # in half decades from the anchor
STEP = 10**0.5
EXTEND = 1  # budgeted rungs below the ladder when its lowest rung wins (or all diverge)
REFINE = 1  # one race halfway (in log) between the choice and the rung below it
# A race whose loss stays above 4x its first loss is not coming back within a short race.
# "Stays": the median of the last DIVERGE_WINDOW losses, so one batch whose loss is an
# outlier (heavy-tailed targets under a likelihood loss: every race has it at the same step,
# however tight its threshold) is a spike, penalised as one, and not a divergence.
DIVERGE_FACTOR = 4.0
DIVERGE_WINDOW = 5
RACES = CANDIDATES + EXTEND + REFINE  # the budget is shared out between this many races
MAX_RACES = 3 * RACES  # when races diverge within a few steps, more of them fit the budget
SYNC_EVERY = 10
TAIL = 0.25  # the race's "end": its last quarter
TAIL_MEDIAN = True
TIE = 0.05  # within 5 % of the best race's progress (and loss level) counts as a tie
SPIKE_WINDOW = 10
SPIKE_FACTOR = 2.0
SPIKE_MIN_JUMP = 0.05
SPIKE_PENALTY = 0.5


def _round(x: float) -> float:
    return float(f"{x:.2g}")


def ladder(anchor: float, n: int = CANDIDATES, low: int = LOW_EXPONENT) -> list[float]:
    """``n`` thresholds half a decade apart, from ``anchor * 10**(low/2)`` up (2 digits)."""
    if not (math.isfinite(anchor) and anchor > 0):
        raise ConfigError(f"the ladder's anchor must be a finite norm > 0, but got {anchor!r}")
    return [float(f"{anchor * STEP ** (low + k):.2g}") for k in range(n)]


# ---------------------------------------------------------------------------------------------
# One race
# ---------------------------------------------------------------------------------------------
@dataclass
class _Race:
    threshold: float
    losses: list[float]
    norms: list[float]
    clipped: float
    diverged: bool
    reason: str | None


def _race(model, optimizer, loss_fn, batches, params, scaler, threshold) -> _Race:
    clip = NormClip(threshold)  # nonfinite="skip": a NaN/inf step changes nothing
    model.train()
    pending: list[Tensor] = []  # [3] per step: loss, pre-clip norm, clipped
    losses: list[float] = []
    norms: list[float] = []
    n_clipped = 0
    # the clipper skips non-finite steps; an explosion is a loss that stays up
    rule = DivergenceCheck(explode_factor=DIVERGE_FACTOR, explode_window=DIVERGE_WINDOW)
    reason = None
    for step, batch in enumerate(batches):
        loss = _backward(model, loss_fn, batch, params, optimizer, scaler, first=step == 0)
        result = clip(params)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        pending.append(
            torch.stack(
                [
                    loss.detach().float().cpu(),
                    result.total_norm.detach().float().cpu(),
                    result.clipped.detach().float().cpu(),
                ]
            )
        )
        if (step + 1) % SYNC_EVERY and step != len(batches) - 1:
            continue
        for loss_f, norm_f, was_clipped in torch.stack(pending).double().tolist():
            losses.append(loss_f)
            norms.append(norm_f)
            n_clipped += bool(was_clipped)
            reason = rule(len(losses) - 1, loss_f, math.isfinite(norm_f))
            if reason is not None:
                break
        pending.clear()
        if reason is not None:
            break
    return _Race(
        threshold=threshold,
        losses=losses,
        norms=[v for v in norms if math.isfinite(v)],
        clipped=n_clipped / max(1, len(losses)),
        diverged=reason is not None,
        reason=reason,
    )


def _spikes(losses: Sequence[float]) -> list[int]:
    x = np.asarray(losses, dtype=float)
    if len(x) <= SPIKE_WINDOW or not math.isfinite(x[0]):
        return []
    jump = SPIKE_MIN_JUMP * abs(x[0])
    out = []
    for t in range(SPIKE_WINDOW, len(x)):
        med = float(np.median(x[t - SPIKE_WINDOW : t]))
        if x[t] > SPIKE_FACTOR * med and x[t] > med + jump:
            out.append(t)
    return out


def _score(race: _Race, spikes: list[int]) -> float:
    if race.diverged or not race.losses:
        return math.inf
    x = np.asarray(race.losses, dtype=float)
    tail = x[-max(1, math.ceil(TAIL * len(x))) :]
    level = float(np.median(tail)) if TAIL_MEDIAN else float(tail.mean())
    penalty = 0.0
    for t in spikes:
        med = float(np.median(x[t - SPIKE_WINDOW : t]))
        penalty += SPIKE_PENALTY * (x[t] - med) / len(x)
    return level + penalty


def _choose(thresholds, scores, first_loss, anchor) -> int | None:
    finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
    if not finite:
        return None
    best = min(finite, key=lambda i: scores[i])
    progress = max(first_loss - scores[best], 0.0) if math.isfinite(first_loss) else 0.0
    # 5 % of the progress made, but never more than 5 % of the loss level itself: a race that
    # ends 3x higher than the best is no tie, however far both came down.
    ok = [i for i in finite if scores[i] <= scores[best] + TIE * min(progress, abs(scores[best]))]
    # Among ties the races show no difference, so nothing argues for moving away from the
    # typical norm: the tie nearest the anchor (in log), the lower one if two are as near.
    return min(ok, key=lambda i: (abs(math.log(thresholds[i] / anchor)), thresholds[i]))


# ---------------------------------------------------------------------------------------------
# The measurement
# ---------------------------------------------------------------------------------------------
def measure_response(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batches: Iterable[Any],
    anchor: float,
    *,
    budget: int = 400,
    scaler: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> ResponseCurve:
    """Race candidate ``max_norm`` thresholds around ``anchor``; restore everything after.

    >>> import torch
    >>> from torch import nn
    >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    >>> batches = [(x[i : i + 16], x[i : i + 16].sum(1, keepdim=True)) for i in range(0, 64, 16)]
    >>> loss_fn = lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1])
    >>> model = nn.Linear(4, 1)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> r = measure_response(model, optimizer, loss_fn, batches, anchor=1.0, budget=40)
    >>> r.chosen in r.thresholds, r.steps_spent <= 40
    (True, True)

    Args:
        model, optimizer, loss_fn, batches, scaler: as for :func:`autoclip.probe`; the same
            first ``race_steps`` batches are used by every race (an iterator is read once,
            and the batches kept for the races).
        anchor: the typical gradient norm (the warm-up's median): the ladder's centre.
        budget: optimizer steps for all races together; each of the at most ``RACES`` races
            (the ladder, an extension below it, a refinement) gets ``budget // RACES`` steps.
        progress: ``(steps done, budget)`` called after each race.
    """
    if not (isinstance(budget, int) and budget >= RACES):
        raise ConfigError(
            f"the measurement's `budget` must be an int >= {RACES} optimizer steps (one per "
            f"race), but got {budget!r}"
        )
    race_steps = budget // RACES
    params = _params_of(optimizer)
    stream = _cycle(batches)
    kept = []
    for _ in range(race_steps):
        try:
            kept.append(next(stream))
        except StopIteration:
            break
    if not kept:
        raise TaskError("batches is empty: give at least one batch")
    races: dict[float, _Race] = {}
    snapshot = _Snapshot(model, optimizer, scaler, params)
    spent = 0

    def run(thresholds: list[float]) -> int | None:
        """Race the new ``thresholds``; the index (in ascending order) of the choice so far."""
        nonlocal spent
        for c in thresholds:
            if c in races:
                continue
            snapshot.restore()
            snapshot.suspend_hooks()
            with torch.enable_grad():
                races[c] = _race(model, optimizer, loss_fn, kept, params, scaler, c)
            spent += len(races[c].losses)
            if progress is not None:
                progress(spent, budget)
        ordered = sorted(races)
        scores = [_score(races[c], _spikes(races[c].losses)) for c in ordered]
        first = float(np.median([r.losses[0] for r in races.values() if r.losses]))
        return _choose(ordered, scores, first, anchor)

    try:
        pick = run(ladder(anchor))
        # The lowest rung won: one rung lower. Everything diverged: a decade lower, again while
        # the budget lasts (a diverged race stops within a few steps, so it costs little).
        while pick is None or pick == 0:
            if spent + race_steps > budget - REFINE * race_steps or len(races) >= MAX_RACES:
                break
            pick = run([_round(min(races) / (STEP if pick == 0 else STEP**2))])
        if pick is not None and pick > 0 and spent + race_steps <= budget:  # refine: halfway
            ordered = sorted(races)
            pick = run([_round(math.sqrt(ordered[pick - 1] * ordered[pick]))])
    finally:
        snapshot.restore()
    ordered = sorted(races)
    spikes = [_spikes(races[c].losses) for c in ordered]
    scores = [_score(races[c], s) for c, s in zip(ordered, spikes, strict=True)]
    notes = []
    if pick is None:
        pick = 0
        notes.append(
            f"every race diverged, down to max_norm {_fmt(ordered[0])}: the lowest threshold is "
            "returned, but the learning rate is likely too high for this model"
        )
    elif pick == 0:
        notes.append("the lowest threshold raced won: a lower one may be better still")
    elif pick == len(ordered) - 1:
        notes.append("the highest threshold raced won: clipping only spikes is enough")
    for c, s in zip(ordered, spikes, strict=True):
        if races[c].diverged:
            notes.append(f"max_norm {_fmt(c)} diverged ({races[c].reason})")
        elif s:
            notes.append(
                f"max_norm {_fmt(c)} spiked at step{'s' if len(s) > 1 else ''} "
                + ", ".join(str(t) for t in s[:5])
            )
    chosen = races[ordered[pick]]
    return ResponseCurve(
        thresholds=tuple(ordered),
        scores=tuple(scores),
        losses=tuple(tuple(races[c].losses) for c in ordered),
        diverged=tuple(races[c].diverged for c in ordered),
        spikes=tuple(tuple(s) for s in spikes),
        clipped=tuple(races[c].clipped for c in ordered),
        chosen=ordered[pick],
        chosen_index=pick,
        chosen_norms=tuple(chosen.norms),
        anchor=float(anchor),
        race_steps=race_steps,
        steps_spent=spent,
        notes=tuple(notes),
    )
