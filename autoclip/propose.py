"""Threshold proposals: statistics and a measured response in, a :class:`Proposal` out.

``suggest(model, optimizer, loss_fn, batches)`` is the one call before training. It

1. warms the model up unclipped for a few steps (:func:`autoclip.probe`, ``budget // 10``
   steps by default) and describes the gradients (:mod:`autoclip.stats`);
2. races candidate ``max_norm`` thresholds from the caller's own starting state
   (:func:`autoclip.response.measure_response`, the rest of the budget): the ladder is centred
   on the warm-up's typical norm, and every race is clipped from its first step, so a model
   that blows up unclipped is still measured under control;
3. recommends a norm clip at the measured threshold, and derives the other candidates and
   the search ranges from the same measurement.

Everything is restored afterwards, bit for bit. ``Proposal.steps_spent`` counts the optimizer
steps of both parts; the default budget is 500 (``suggest(..., budget=...)``).

Why measure. Where most steps are clipped, the threshold acts as a step size, and the stable
one depends on the loss surface and the learning rate, not on the size of the gradients
during a warm-up that may itself be unstable: a threshold read off warm-up norms (the rule
before this one: the settled median) did not transfer to models it was not chosen on.

The candidates, from the measurement where it serves:

* **norm** -- ``max_norm`` = the measured threshold.
* **quantile** -- the fraction of the chosen race's (pre-clip) norms below ``max_norm``, in
  [0.1, 0.99], warm-started from those norms: it starts at the measured threshold and follows
  the level during training. ``window`` keeps at least 20 expected exceedances.
* **zscore** -- ZClip cuts spikes only: ``z_thresh`` is the z-score of ``max_norm`` among the
  chosen race's norms, within [1.5, 4] (ZClip's default 2.5 lies in the middle).
* **agc** -- the 90th percentile of the unit-wise ``||G_i|| / ||W_i||`` ratios, scaled by how
  far the measured threshold lies below the typical norm (``max_norm / anchor``, at most 1).
* **value** -- the 99th percentile of the sampled ``|g|`` elements, scaled the same way.

Without a measurement (``propose(stats)`` alone, or ``suggest(..., budget=0)``), the
candidates fall back to the statistics: ``max_norm`` at the normal regime's median (the median
of the last quarter when the level drifts, of the steps before the blow-up when the warm-up
diverged). That value is also the anchor the measurement's ladder is centred on.

>>> from autoclip.probe import GradTrace
>>> trace = GradTrace(norms=(1.0, 2.0, 1.5, 1.2), losses=(1.0, 0.9, 0.8, 0.7),
...                   layer_names=("w",), layer_norms=((1.0,), (2.0,), (1.5,), (1.2,)))
>>> proposal = propose(trace)  # statistics only: the fallback rule, a norm clip at the median
>>> proposal.recommended.describe(), proposal.space.strategies[:2]
('norm(max_norm=1.4)', ('norm', 'value'))
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from autoclip._candidates import _from_stats, _measured
from autoclip._snapshot import _get_rng, _set_rng
from autoclip.errors import ConfigError
from autoclip.probe import GradTrace, probe
from autoclip.proposal import STRATEGIES, Candidate, Proposal, SearchSpace, _fmt  # noqa: F401
from autoclip.response import RACES, ResponseCurve, measure_response
from autoclip.stats import GradStats, compute_stats

__all__ = [
    "Candidate",
    "Proposal",
    "SearchSpace",
    "anchor_norm",
    "propose",
    "suggest",
    "suggest_task",
]

# Optimizer steps of suggest() in all: small enough to call before every training run.
BUDGET = 500
MIN_RACE_BUDGET = RACES  # one step per race at least


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------
def propose(
    stats: GradStats | GradTrace,
    response: ResponseCurve | None = None,
    *,
    steps_spent: int | None = None,
) -> Proposal:
    """A :class:`Proposal` from warm-up statistics (or a trace) and, when given, a measurement.

    With ``response`` (from :func:`autoclip.response.measure_response`) the recommendation is
    the measured threshold; without it, the statistics' fallback (see the module docstring).
    ``steps_spent`` defaults to the warm-up's steps plus the measurement's.
    """
    if isinstance(stats, GradTrace):
        stats = compute_stats(stats)
    if not isinstance(stats, GradStats):
        raise ConfigError(f"propose needs GradStats or a GradTrace, but got {type(stats).__name__}")
    if response is not None and not isinstance(response, ResponseCurve):
        raise ConfigError(f"response must be a ResponseCurve, but got {type(response).__name__}")
    base = _from_stats(stats)
    if steps_spent is None:
        steps_spent = stats.steps + (response.steps_spent if response is not None else 0)
    if response is None:
        return dataclasses.replace(base, steps_spent=steps_spent)
    return _measured(base, stats, response, steps_spent)


def anchor_norm(stats: GradStats) -> float:
    """The typical warm-up norm the measurement's ladder is centred on (1.0 if there is none)."""
    max_norm = _from_stats(stats).candidate("norm").params["max_norm"]
    return max_norm if math.isfinite(max_norm) and max_norm > 0 else 1.0


def suggest(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Iterable[Any],
    steps: int | None = None,
    *,
    budget: int = BUDGET,
    **probe_kw: Any,
) -> Proposal:
    """The one call before training: warm-up, statistics, measured races, proposal.

    >>> import torch
    >>> from torch import nn
    >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    >>> batches = [(x[i : i + 16], x[i : i + 16].sum(1, keepdim=True)) for i in range(0, 64, 16)]
    >>> loss_fn = lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1])
    >>> model = nn.Linear(4, 1)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> proposal = suggest(model, optimizer, loss_fn, batches, budget=60)
    >>> proposal.steps_spent <= 60, proposal.response is not None
    (True, True)
    >>> handle = proposal.clipper().attach(optimizer)  # then train as usual

    ``suggest(model, optimizer, loss_fn, batches).clipper().attach(optimizer)`` and train;
    the model, optimizer, scaler and random state are left exactly as they were.

    Args:
        loss_fn: ``(model, batch) -> scalar tensor``, the training loss of one batch.
        batches: a re-iterable (list, DataLoader) or an iterator (read once; the batches
            the measurement needs are kept in memory).
        steps: warm-up steps (default ``budget // 10``); the rest of ``budget`` goes to the
            races.
        budget: optimizer steps in all (warm-up + races; 500 by default). ``budget=0``
            skips the races and proposes from the warm-up statistics alone (``steps`` 100).
        **probe_kw: to :func:`autoclip.probe` (``scaler=``, ``safety_clip=``,
            ``progress=``...); ``scaler`` and ``progress`` are used by the races too.
    """
    if not (isinstance(budget, int) and budget >= 0):
        raise ConfigError(f"`budget` must be an int >= 0 optimizer steps, but got {budget!r}")
    if steps is None:
        steps = max(10, budget // 10) if budget else 100
    if not budget:
        return propose(probe(model, optimizer, loss_fn, batches, steps, **probe_kw))
    race_budget = budget - steps
    if race_budget < MIN_RACE_BUDGET:
        raise ConfigError(
            f"`budget` ({budget}) must leave at least {MIN_RACE_BUDGET} steps for the races after "
            f"the {steps}-step warm-up; raise budget or lower steps (or budget=0: no races)"
        )
    if isinstance(batches, Iterator):  # read once: keep what both parts need
        batches = list(itertools.islice(batches, max(steps, race_budget)))
    progress = probe_kw.pop("progress", None)
    rng = _get_rng(set())  # the statistics' first import of scikit-learn draws from `random`
    try:
        trace = probe(
            model,
            optimizer,
            loss_fn,
            batches,
            steps,
            progress=None if progress is None else (lambda done, _: progress(done, budget)),
            **probe_kw,
        )
        stats = compute_stats(trace)
        curve = measure_response(
            model,
            optimizer,
            loss_fn,
            batches,
            anchor_norm(stats),
            budget=race_budget,
            scaler=probe_kw.get("scaler"),
            progress=None if progress is None else (lambda done, _: progress(steps + done, budget)),
        )
    finally:
        _set_rng(rng)
    return propose(stats, curve)


def suggest_task(
    task: Any, steps: int | None = None, *, budget: int = BUDGET, **kw: Any
) -> Proposal:
    """:func:`suggest` on a fresh model and optimizer from ``task.build()`` (its own seed).

    >>> import torch
    >>> from torch import nn
    >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    >>> batches = [(x[i : i + 16], x[i : i + 16].sum(1, keepdim=True)) for i in range(0, 64, 16)]
    >>> loss_fn = lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1])
    >>> import autoclip
    >>> task = autoclip.Task(lambda: nn.Linear(4, 1), lambda p: torch.optim.SGD(p, lr=0.1),
    ...                      loss_fn, batches, steps=20, name="doc")
    >>> suggest_task(task, budget=60).steps_spent <= 60
    True

    ``task`` is a :class:`autoclip.Task` or a target for :func:`autoclip.load_task`; the
    global random state is restored afterwards. Keyword arguments go to :func:`suggest`.
    """
    from autoclip.task import load_task

    task = load_task(task)
    rng = _get_rng(set())
    try:
        model, optimizer = task.build()
        return suggest(
            model, optimizer, task.compute_loss, task.batches, steps, budget=budget, **kw
        )
    finally:
        _set_rng(rng)
