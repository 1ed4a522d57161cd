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

import numpy as np
import torch
from torch import nn

from autoclip._snapshot import _get_rng, _set_rng
from autoclip.clippers import clipper_info, searchable
from autoclip.clippers._rules import positive, sig
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

# ZClip's published defaults.
ZSCORE_ALPHA = 0.97
ZSCORE_WARMUP = 25
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


def _measured(base: Proposal, st: GradStats, r: ResponseCurve, steps_spent: int) -> Proposal:
    c = r.chosen
    # The chosen race's norms after its first quarter: what training at c sees once started.
    norms = np.asarray(r.chosen_norms[len(r.chosen_norms) // 4 :] or r.chosen_norms, float)
    norms = norms[np.isfinite(norms)]
    scale = min(1.0, c / r.anchor)  # how far below the typical norm the measured clip lies
    norm = Candidate("norm", {"max_norm": c}, "measured: " + r.describe())
    below = float((norms <= c).mean()) if norms.size else 0.5
    q = float(np.clip(round(below, 2), 0.1, 0.99))
    window = int(np.clip(math.ceil(20 / (1 - q)), 100, 1000))
    quantile = Candidate(
        "quantile",
        {"quantile": q, "window": window},
        f"{q:.0%} of the chosen race's norms were below max_norm={_fmt(c)}: warm-started from "
        "them, it starts at the measured threshold and follows the level",
    )
    sd = float(np.std(norms, ddof=1)) if norms.size >= 2 else 0.0
    z_raw = (c - float(norms.mean())) / sd if sd > 0 else 2.5
    z = float(np.clip(round(z_raw, 1), 1.5, 4.0))
    zscore = Candidate(
        "zscore",
        {
            "z_thresh": z,
            "alpha": ZSCORE_ALPHA,
            "warmup_steps": max(1, min(ZSCORE_WARMUP, norms.size)),
        },
        f"max_norm={_fmt(c)} is {z_raw:.1f} standard deviations from the chosen race's mean norm"
        + (
            "; ZClip only cuts spikes, so z_thresh stays in [1.5, 4]"
            if z != round(z_raw, 1)
            else ""
        ),
    )
    how = (
        ""
        if scale == 1.0
        else f", times {_fmt(sig(scale))} (the measured max_norm / the median norm)"
    )
    if math.isfinite(st.values.p99) and st.values.p99 > 0:
        value = Candidate(
            "value",
            {"clip_value": sig(st.values.p99 * scale)},
            base.candidate("value").reason + how,
        )
    else:
        value = Candidate(
            "value",
            {"clip_value": c},
            "no |g| elements were sampled (the warm-up stopped early): the measured max_norm",
        )
    if math.isfinite(st.agc_ratios.p90) and st.agc_ratios.p90 > 0:
        agc = Candidate(
            "agc",
            {"clipping": sig(st.agc_ratios.p90 * scale)},
            base.candidate("agc").reason + how,
        )
    else:
        agc = Candidate(
            "agc",
            {"clipping": 0.01},
            "no unit ratios were sampled (the warm-up stopped early): the NFNets value 0.01",
        )
    by_name = {"norm": norm, "value": value, "quantile": quantile, "zscore": zscore, "agc": agc}
    by_name.update(_others(st, c, have=by_name))  # registered clippers: the registry's rules
    order = tuple(by_name)
    space = _space(st, by_name, order)
    # The races' divergences and spikes are in describe(); the notes add where the choice sits.
    notes = "; ".join(n for n in r.notes if not n.startswith("max_norm "))
    reason = (
        f"Measured ({r.steps_spent} steps of races after a {st.steps}-step warm-up): "
        f"{r.describe()}." + (f" Notes: {notes}." if notes else "")
    )
    return Proposal(
        recommended=norm,
        reason=reason,
        candidates=tuple(by_name[s] for s in order),
        space=space,
        warm_norms=tuple(float(v) for v in norms),
        stats=st,
        response=r,
        steps_spent=steps_spent,
    )


def _from_stats(st: GradStats) -> Proposal:
    """The statistics-only proposal: the fallback, and the anchor of the measurement."""
    warm = st.settled_norms
    level = positive(st.end_level, st.median)
    p50 = positive(st.normal.p50, level)
    diverged = st.diverged

    if diverged:
        before = _norms_before(st, st.blowup_step)
        max_norm = sig(float(np.median(before)) if before else st.median)
        upto = st.blowup_step if st.blowup_step is not None else st.steps
        norm_reason = f"the median norm of steps 0-{upto - 1}, before the loss blew up"
    elif st.drifting:
        max_norm = sig(level)
        norm_reason = "the median norm of the warm-up's last quarter (the level still drifts)"
    else:
        max_norm = sig(p50)
        norm_reason = "the normal regime's median: ordinary steps at most their typical size"
    norm = Candidate("norm", {"max_norm": max_norm}, norm_reason)

    # the other strategies' candidates: the registry's range rules (clippers/_rules.py for
    # the built-ins), read off the same statistics and this max_norm
    by_name = {"norm": norm, **_others(st, max_norm, have={"norm"})}
    n_spikes = len(st.spike_steps)
    spikes = (
        f"{n_spikes} spike{'s' if n_spikes != 1 else ''} in {st.steps} steps{_spike_origin(st)}"
        if n_spikes
        else "no spikes"
    )
    if diverged:
        pick = "norm"
        reason = (
            f"The warm-up diverged ({st.reason}), so clip every step at the median norm from "
            f"before the loss blew up ({_fmt(max_norm)}); a rule that learns its threshold from "
            "the run itself would learn it from the blow-up."
        )
    elif st.drifting:
        change = "rises" if st.settled_change > 1 else "falls"
        factor = max(st.settled_change, 1 / st.settled_change)
        moving = (
            f"The norm level still {change} at the end of the warm-up ({factor:.1f}x over its "
            f"last {st.steps - st.settle_step} steps"
        )
        if n_spikes:
            pick = "norm"
            reason = (
                f"{moving}), but with {spikes} an adaptive threshold would learn from the very "
                f"blow-ups it should stop, so clip at a fixed max_norm={_fmt(max_norm)}, the "
                "median norm of the warm-up's last quarter."
            )
        else:
            pick = "quantile"
            reason = (
                f"{moving}; no spikes), so a quantile clipper at about the median, warm-started "
                "from the settled norms, follows the level where a fixed threshold would not."
            )
    else:
        pick = "norm"
        reason = (
            f"The norm level is steady after step {st.settle_step} ({spikes}), so a fixed "
            f"max_norm={_fmt(max_norm)} at the normal regime's median caps every step, spikes "
            "included, at the size of an ordinary one and leaves the smaller half untouched."
        )
    order = (pick, *[s for s in by_name if s != pick])
    space = _space(st, by_name, order)
    return Proposal(
        recommended=by_name[pick],
        reason=reason,
        candidates=tuple(by_name[s] for s in order),
        space=space,
        warm_norms=tuple(float(v) for v in warm),
        stats=st,
    )


def _norms_before(st: GradStats, step: int | None) -> list[float]:
    """Finite norms of the steps before ``step`` (all of them when None)."""
    end = st.steps if step is None else step
    return [v for v in st.norms[:end] if math.isfinite(v) and v > 0]


def _spike_origin(st: GradStats) -> str:
    layers = st.spike_layers
    if not layers:
        return ""
    name, share = layers[0]
    return f", {share:.0%} of their excess from {name}"


def _others(st: GradStats, threshold: float, have: Iterable[str]) -> dict[str, Candidate]:
    """Candidates, from the registry's range rule (or the clipper's defaults), of every
    searchable clipper not in ``have``, in the registry's order."""
    out = {}
    for info in searchable():
        if info.name not in have:
            params, why = info.propose(st, threshold)
            out[info.name] = Candidate(info.name, params, why)
    return out


def _space(st: GradStats, by_name: dict[str, Candidate], order: Iterable[str]) -> SearchSpace:
    """Each candidate's search range, by the registry's range rule (clippers/_rules.py)."""
    order = tuple(order)
    ranges = {n: clipper_info(n).range_for(st, by_name[n].params) for n in order}
    return SearchSpace(ranges, order)


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
