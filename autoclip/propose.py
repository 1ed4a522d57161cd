"""Threshold proposals: :class:`GradStats` in, a :class:`Proposal` out; ``suggest`` = probe + it.

Every threshold is read off the **normal regime of the settled part** of the warm-up (see
:mod:`autoclip.stats`): the steps after the start-up transient, minus the spikes. The rules:

* **norm** -- ``max_norm`` = the normal regime's **median** (the median of the warm-up's last
  quarter when the level still drifts). Half of the ordinary steps pass untouched; the larger
  half, and every spike, are scaled down to the typical size, so no step is ever bigger than
  an ordinary one. Why so low: the threshold that matters is the one that stops the steps that
  wreck training, and on the models that need clipping those are not only the rare outliers
  but the whole upper tail (large gradients go with sharp regions, where a full step
  overshoots: Zhang et al. 2020, "Why gradient clipping accelerates training"). Thresholds
  high in the distribution fail there. In a pilot on the ``digits_mlp``, ``lstm_adding`` and
  ``char_lstm`` studies (two seeds each, run before ``relu_rnn`` was tried), clipping at the
  normal regime's 99th percentile trained worse than at its median in five runs of six (a
  tie in the sixth) and the "5-10x the average" rule of thumb (whose average is inflated by
  the very spikes it should cut) in all six, twice to chance; thresholds from the lower
  quartile to the median were close to each other and to the best. The summary prints where
  the rule of thumb would have put the threshold.
* **value** -- ``clip_value`` = the 99th percentile of the sampled ``|g|`` elements, so a step
  clamps about 1% of its elements and a spike step many more.
* **quantile** -- the fraction of settled norms below ``max_norm`` (so the adaptive threshold
  starts where the fixed one is, about the median), at least 0.1 and at most 0.99;
  ``window`` keeps at least 20 expected exceedances of that quantile (and 100 to 1000 steps).
* **zscore** -- ZClip only ever cuts spikes, so its ``z_thresh`` is set on the spikes' side:
  the z-score of the normal regime's 95th percentile, within [1.5, 4] (ZClip's default 2.5
  lies in the middle); ZClip's ``alpha``.
* **agc** -- ``clipping`` = the 90th percentile of the unit-wise ``||G_i|| / ||W_i||`` ratios:
  a tenth of the weight rows are clipped on an ordinary step.

**Early-step bias.** A threshold from the first steps alone is biased (norms usually fall as
training settles, so it would be too loose; they can also jump when an early blow-up damages
the model). The proposal copes in four ways: (1) the transient is cut off (only steps from
``settle_step`` on count, see :mod:`autoclip.stats`); (2) when the settled level still drifts,
the fixed threshold is taken from the *last* quarter of the warm-up; (3) then, if the model
shows no spikes, the recommendation is an adaptive (quantile) clipper, which follows the level
during training; (4) adaptive clippers are warm-started from the settled norms only
(``warm_norms``), never from the transient. The probe's safety net (:mod:`autoclip.probe`)
also keeps an early blow-up from wrecking the warm-up the statistics come from.

**Which one is recommended.** A fixed norm clip at the median when the level is steady (there
is nothing for an adaptive rule to follow); when the level drifts, quantile clipping at about
the median, warm-started, but only if the warm-up had no spikes: with spikes the model's
gradients blow up, and a rule that learns its threshold from the run's own norms is dragged up
by the very blow-ups it should stop (``studies/probe_rnn.py`` shows it on ``relu_rnn``: the
warm-started quantile candidate against the recommended fixed one), so the threshold stays
fixed, at the level of the last quarter. When the warm-up itself diverged: a norm clip at the
median of the norms from before the loss blew up (passed 10x its first value), the only steps
taken by a model still under control.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from autoclip import serialize
from autoclip.clippers import BaseClipper, create_clipper, list_clippers
from autoclip.errors import ConfigError
from autoclip.probe import GradTrace, probe
from autoclip.stats import GradStats, compute_stats

__all__ = ["Candidate", "Proposal", "SearchSpace", "propose", "suggest"]

STRATEGIES = ("norm", "value", "quantile", "zscore", "agc")
# ZClip's published defaults.
ZSCORE_ALPHA = 0.97
ZSCORE_WARMUP = 25


@dataclass(frozen=True)
class Candidate:
    """One clipper setting: ``create_clipper(strategy, **params)``, and why."""

    strategy: str
    params: dict[str, Any]
    reason: str

    def __post_init__(self) -> None:
        names = [c.name for c in list_clippers()]
        if self.strategy not in names:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of {names}")

    @property
    def config(self) -> dict[str, Any]:
        """``{"name": strategy, **params}``, the form ``clipper.config`` takes."""
        return {"name": self.strategy, **self.params}

    def clipper(self) -> BaseClipper:
        """A fresh (not warm-started) clipper."""
        return create_clipper(self.strategy, **self.params)

    def describe(self) -> str:
        args = ", ".join(f"{k}={_fmt(v)}" for k, v in self.params.items())
        return f"{self.strategy}({args})"


@dataclass(frozen=True)
class SearchSpace:
    """Ranges for the Optuna search; ``norm``, ``value`` and ``agc`` are sampled log-uniformly.

    ``norm``: ``max_norm``; ``value``: ``clip_value``; ``quantile``: the quantile;
    ``z_thresh``: ZClip's threshold; ``agc``: AGC's ``clipping`` ratio; ``strategies``: the
    strategies to search, the recommended one first.
    """

    norm: tuple[float, float]
    value: tuple[float, float]
    quantile: tuple[float, float]
    z_thresh: tuple[float, float]
    agc: tuple[float, float]
    strategies: tuple[str, ...] = STRATEGIES

    def __post_init__(self) -> None:
        for name in ("norm", "value", "quantile", "z_thresh", "agc"):
            low, high = getattr(self, name)
            if not (0 < low <= high and math.isfinite(high)):
                raise ConfigError(
                    f"SearchSpace.{name}: `0 < low <= high` must hold, but got "
                    f"low={low!r}, high={high!r}"
                )
        if not (0 < self.quantile[1] < 1):
            raise ConfigError(f"SearchSpace.quantile must lie in (0, 1), but got {self.quantile}")

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Proposal:
    """The recommended clipper, a candidate for every strategy, and the search ranges."""

    recommended: Candidate
    reason: str
    candidates: tuple[Candidate, ...]
    space: SearchSpace
    warm_norms: tuple[float, ...] = ()
    stats: GradStats | None = field(default=None, compare=False)

    def candidate(self, strategy: str) -> Candidate:
        """The candidate for ``strategy`` (a registry name)."""
        for c in self.candidates:
            if c.strategy == strategy:
                return c
        raise ConfigError(
            f"no candidate for strategy {strategy!r}; this proposal has "
            f"{[c.strategy for c in self.candidates]}"
        )

    def clipper(self, candidate: Candidate | str | None = None) -> BaseClipper:
        """A ready clipper: the recommended one by default, or a candidate / strategy name.

        Adaptive clippers (quantile, zscore) come warm-started from ``warm_norms``, so they
        clip from the first training step instead of learning from scratch.
        """
        if candidate is None:
            candidate = self.recommended
        elif isinstance(candidate, str):
            candidate = self.candidate(candidate)
        elif not isinstance(candidate, Candidate):
            raise ConfigError(
                f"candidate must be a Candidate, a strategy name or None, but got {candidate!r}"
            )
        clip = candidate.clipper()
        if clip.adaptive and self.warm_norms:
            clip.warm_start(list(self.warm_norms))
        return clip

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return serialize.to_plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Proposal:
        return serialize.from_plain(cls, d)

    def to_json(self, **kw: Any) -> str:
        return serialize.dumps(self, **kw)

    @classmethod
    def from_json(cls, text: str) -> Proposal:
        return serialize.loads(text, cls)

    # -- report ---------------------------------------------------------------------------------
    def summary(self) -> str:
        """A short human report: the recommendation, the candidates, the search ranges."""
        lines = [f"Recommended: {self.recommended.describe()}", f"  {self.reason}"]
        lines.append("Candidates:")
        for c in self.candidates:
            lines.append(f"  {c.describe():<44} {c.reason}")
        s = self.space
        lines.append(
            "Search ranges: "
            f"max_norm {_fmt(s.norm[0])}-{_fmt(s.norm[1])}, "
            f"clip_value {_fmt(s.value[0])}-{_fmt(s.value[1])}, "
            f"quantile {_fmt(s.quantile[0])}-{_fmt(s.quantile[1])}, "
            f"z_thresh {_fmt(s.z_thresh[0])}-{_fmt(s.z_thresh[1])}, "
            f"agc {_fmt(s.agc[0])}-{_fmt(s.agc[1])}"
        )
        if self.stats is not None:
            st = self.stats
            lines.append(
                f"Rule of thumb for comparison: 5-10x the mean norm = "
                f"{_fmt(5 * st.mean)}-{_fmt(10 * st.mean)}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _sig(x: float, digits: int = 2) -> float:
    """Round to ``digits`` significant digits: thresholds are not known to more."""
    if not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{digits}g}")


def _positive(x: float, fallback: float) -> float:
    return x if math.isfinite(x) and x > 0 else fallback


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------
def propose(stats: GradStats | GradTrace) -> Proposal:
    """A :class:`Proposal` from warm-up statistics (or a trace, whose statistics it computes)."""
    if isinstance(stats, GradTrace):
        stats = compute_stats(stats)
    if not isinstance(stats, GradStats):
        raise ConfigError(f"propose needs GradStats or a GradTrace, but got {type(stats).__name__}")
    st = stats
    warm = st.settled_norms
    settled = np.asarray(warm, dtype=float)
    level = _positive(st.end_level, st.median)
    p50 = _positive(st.normal.p50, level)
    diverged = st.diverged

    if diverged:
        before = _norms_before(st, st.blowup_step)
        max_norm = _sig(float(np.median(before)) if before else st.median)
        upto = st.blowup_step if st.blowup_step is not None else st.steps
        norm_reason = f"the median norm of steps 0-{upto - 1}, before the loss blew up"
    elif st.drifting:
        max_norm = _sig(level)
        norm_reason = "the median norm of the warm-up's last quarter (the level still drifts)"
    else:
        max_norm = _sig(p50)
        norm_reason = "the normal regime's median: ordinary steps at most their typical size"
    norm = Candidate("norm", {"max_norm": max_norm}, norm_reason)

    clip_value = _sig(_positive(st.values.p99, max_norm))
    value = Candidate(
        "value",
        {"clip_value": clip_value},
        "the 99th percentile of the sampled |g| elements in the settled part",
    )

    below = float((settled <= max_norm).mean()) if settled.size else 0.5
    q = float(np.clip(round(below, 2), 0.1, 0.99))
    window = int(np.clip(math.ceil(20 / (1 - q)), 100, 1000))
    quantile = Candidate(
        "quantile",
        {"quantile": q, "window": window},
        f"{q:.0%} of settled steps are below max_norm={_fmt(max_norm)}: warm-started, it starts "
        "at the fixed threshold and follows the level",
    )

    normal_sd = _normal_sd(st, settled)
    normal_mean = _positive(st.normal_mean, p50)
    edge = _positive(st.normal.p95, normal_mean)
    z = (edge - normal_mean) / normal_sd if normal_sd > 0 else 2.5
    z = float(np.clip(round(z, 1), 1.5, 4.0))
    zscore = Candidate(
        "zscore",
        {
            "z_thresh": z,
            "alpha": ZSCORE_ALPHA,
            "warmup_steps": max(1, min(ZSCORE_WARMUP, len(warm))),
        },
        f"the normal regime's 95th percentile is {z:.1f} standard deviations above its mean",
    )

    clipping = _sig(_positive(st.agc_ratios.p90, 0.01))
    agc = Candidate(
        "agc",
        {"clipping": clipping},
        "the 90th percentile of the unit-wise |G_i|/|W_i| ratios in the settled part",
    )

    by_name = {"norm": norm, "value": value, "quantile": quantile, "zscore": zscore, "agc": agc}
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
    order = (pick, *[s for s in STRATEGIES if s != pick])
    space = _space(st, max_norm, clip_value, q, z, clipping, order)
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


def _normal_sd(st: GradStats, settled: np.ndarray) -> float:
    """Standard deviation of the normal regime's norms (settled, spikes removed)."""
    spikes = set(st.spike_steps)
    normal = [
        v
        for i, v in enumerate(st.norms)
        if i >= st.settle_step and i not in spikes and math.isfinite(v)
    ]
    if len(normal) >= 2:
        return float(np.std(normal, ddof=1))
    return float(np.std(settled)) if settled.size >= 2 else 0.0


def _spike_origin(st: GradStats) -> str:
    layers = st.spike_layers
    if not layers:
        return ""
    name, share = layers[0]
    return f", {share:.0%} of their excess from {name}"


def _space(st, max_norm, clip_value, q, z, clipping, order) -> SearchSpace:
    # max_norm: from a tenth of the candidate, itself a median (nearly every step clipped:
    # normalised-gradient descent), to ten times it (the loose end of the 5-10x rule of thumb)
    norm = (_sig(max_norm / 10), _sig(10 * max_norm))
    v50 = _positive(st.values.p50, clip_value / 10)
    value = (_sig(min(v50, clip_value / 3)), _sig(10 * clip_value))
    # from AutoClip's published 10th percentile to clipping only the top 1%
    quantile = (min(0.1, q), 0.99)
    z_thresh = (min(1.5, z), max(4.0, z))
    agc = (_sig(clipping / 10), _sig(clipping * 10))
    return SearchSpace(norm, value, quantile, z_thresh, agc, tuple(order))


def suggest(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Iterable[Any],
    steps: int = 100,
    **probe_kw: Any,
) -> Proposal:
    """The one call before training: probe, statistics, proposal.

    ``suggest(model, optimizer, loss_fn, batches).clipper().attach(optimizer)`` and train;
    the model, optimizer and random state are left exactly as they were. Keyword arguments
    go to :func:`autoclip.probe` (``scaler=``, ``safety_clip=``, ``progress=``...).
    """
    trace = probe(model, optimizer, loss_fn, batches, steps, **probe_kw)
    return propose(compute_stats(trace))
