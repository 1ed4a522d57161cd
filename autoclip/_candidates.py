"""The proposal rules: a :class:`~autoclip.proposal.Proposal` from statistics and a measurement.

:func:`_measured` builds the candidates from the races' measured threshold, :func:`_from_stats`
the statistics-only fallback (also the anchor the races are centred on); both take the other
strategies' candidates and the search ranges from the clipper registry. What each rule does,
and why, is in :mod:`autoclip.propose`, whose :func:`~autoclip.propose.propose` calls them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from autoclip.clippers import clipper_info, searchable
from autoclip.clippers._rules import positive, sig
from autoclip.proposal import Candidate, Proposal, SearchSpace, _fmt
from autoclip.response import ResponseCurve
from autoclip.stats import GradStats

# ZClip's published defaults.
ZSCORE_ALPHA = 0.97
ZSCORE_WARMUP = 25


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
