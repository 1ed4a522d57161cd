"""The statistics' result: :class:`GradStats` and its :class:`Percentiles`, and its summary.

Frozen, serialisable dataclasses (strict JSON through ``to_json``), made by
:func:`autoclip.stats.compute_stats` (where the methods are described) and read by the
proposal rules and the reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoclip import serialize

__all__ = ["GradStats", "Percentiles"]

# Layers listed in the summary.
TOP_LAYERS = 3
_PCTS = (50, 75, 90, 95, 99)


@dataclass(frozen=True)
class Percentiles:
    """p50, p75, p90, p95, p99 and max of a set of values (NaN when the set is empty)."""

    p50: float
    p75: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Any) -> Percentiles:
        a = np.asarray(values, dtype=float)
        if a.size == 0:
            return cls(*([math.nan] * 6))
        p = np.percentile(a, _PCTS)
        return cls(*(float(v) for v in p), float(a.max()))


@dataclass(frozen=True)
class GradStats(serialize.Serializable):
    """Robust statistics of a warm-up's gradients (see :mod:`autoclip.stats` for the methods).

    Norm fields are global 2-norms in the gradient's own units; ``trend`` and
    ``settled_trend`` are slopes of the natural log of the norm per step.

    >>> from autoclip.probe import GradTrace
    >>> from autoclip.stats import compute_stats
    >>> trace = GradTrace(norms=(1.0, 2.0, 1.5, 1.2), losses=(1.0, 0.9, 0.8, 0.7),
    ...                   layer_names=("w",), layer_norms=((1.0,), (2.0,), (1.5,), (1.2,)))
    >>> st = compute_stats(trace)
    >>> st.steps, st.p50, st.max
    (4, 1.35, 2.0)
    """

    # the run
    steps: int
    planned_steps: int
    stopped_early: bool
    reason: str | None
    diverged: bool  # the warm-up stopped because the model diverged
    blowup_step: int | None  # first step whose loss was NaN/inf or 10x the first (None: none)
    norms: tuple[float, ...]
    losses: tuple[float, ...]
    # global norm over all finite steps
    p50: float
    p75: float
    p90: float
    p95: float
    p99: float
    max: float
    mean: float
    median: float
    mad: float
    # the settled part, and its normal (non-spike) regime
    settle_step: int
    settled: Percentiles
    normal: Percentiles
    normal_mean: float
    normal_sigma: float  # robust spread of log(norm) around its level in the normal regime
    end_level: float  # median norm of the last quarter of the warm-up: where it is heading
    # trend
    trend: float
    settled_trend: float
    trend_ratio: float
    settled_change: float  # factor the fitted level moved by across the settled part
    drifting: bool  # at the settled rate, >2x per warm-up length, and beyond noise
    # spikes
    spike_steps: tuple[int, ...]
    spike_rate: float
    spike_factor: float  # median size of a spike relative to its local level (NaN if none)
    nonfinite_steps: tuple[int, ...]
    regimes: int  # 2 when the mixture found a separate spike regime
    # layers
    layer_names: tuple[str, ...]
    layer_share: tuple[float, ...]
    layer_spike_share: tuple[float, ...]
    layer_ratio: tuple[float, ...]  # median ||g_l|| / ||w_l|| over the settled steps
    # element values |g| and AGC unit ratios, settled sampled steps
    values: Percentiles
    agc_ratios: Percentiles
    # losses
    loss_start: float
    loss_end: float
    optimizer: str = ""
    lr: float | None = None

    _TEXT_FIELDS = ("reason", "layer_names", "optimizer")
    _NESTED = ("settled", "normal", "values", "agc_ratios")

    # -- derived views ------------------------------------------------------------------------
    @property
    def finite_norms(self) -> tuple[float, ...]:
        return tuple(x for x in self.norms if math.isfinite(x))

    @property
    def settled_norms(self) -> tuple[float, ...]:
        """Finite norms from ``settle_step`` on (the warm-start material)."""
        return tuple(x for x in self.norms[self.settle_step :] if math.isfinite(x))

    @property
    def top_layers(self) -> tuple[tuple[str, float], ...]:
        """``(name, share of the squared norm)``, largest first."""
        return _ranked(self.layer_names, self.layer_share)

    @property
    def spike_layers(self) -> tuple[tuple[str, float], ...]:
        """``(name, share of the spikes' excess squared norm)``, largest first; empty if none."""
        return tuple(x for x in _ranked(self.layer_names, self.layer_spike_share) if x[1] > 0)

    # -- report ---------------------------------------------------------------------------------
    def summary(self) -> str:
        """A short human report."""
        opt = f"{self.optimizer}, lr={_g(self.lr)}" if self.optimizer else ""
        lines = [f"Gradients over {self.steps} warm-up steps" + (f" ({opt})" if opt else "")]
        if self.stopped_early:
            lines.append(f"  stopped early: {self.reason}")
        if self.blowup_step is not None:
            lines.append(
                f"  blow-up       the loss passed 10x its first value at step {self.blowup_step}"
            )
        lines.append(
            _stat_line(
                "global norm",
                [("p50", self.p50), ("p90", self.p90), ("p99", self.p99), ("max", self.max)],
                f"  (mean {_g(self.mean)}, MAD {_g(self.mad)})",
            )
        )
        lines.append(
            _stat_line(
                "settled",
                [
                    ("p50", self.settled.p50),
                    ("p95", self.settled.p95),
                    ("normal regime p99", self.normal.p99),
                    ("last quarter p50", self.end_level),
                ],
                prefix=f"from step {self.settle_step}: ",
            )
        )
        direction = "rise" if self.trend > 0 else "fall"
        if math.isfinite(self.trend):
            lines.append(
                f"  trend         norms {direction} {abs(self.trend) * 100:.2g}%/step "
                f"(last quarter / first quarter: x{_g(self.trend_ratio)})"
            )
        if self.spike_steps:
            where = ", ".join(str(s) for s in self.spike_steps[:8])
            more = f" (+{len(self.spike_steps) - 8} more)" if len(self.spike_steps) > 8 else ""
            size = (
                f", about {_g(self.spike_factor)}x the local level"
                if math.isfinite(self.spike_factor)
                else ""
            )
            lines.append(
                f"  spikes        {len(self.spike_steps)} steps "
                f"({self.spike_rate:.1%}): {where}{more}{size}"
            )
            lines.append(f"  spikes from   {_layer_list(self.spike_layers)}")
        else:
            lines.append("  spikes        none")
        lines.append(f"  top layers    {_layer_list(self.top_layers)}")
        v, a = self.values, self.agc_ratios
        lines.append(_stat_line("|g| values", [("p50", v.p50), ("p99", v.p99), ("max", v.max)]))
        lines.append(_stat_line("AGC ratios", [("p50", a.p50), ("p90", a.p90), ("p99", a.p99)]))
        lines.append(f"  loss          {_g(self.loss_start)} -> {_g(self.loss_end)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _ranked(names: tuple[str, ...], shares: tuple[float, ...]) -> tuple[tuple[str, float], ...]:
    order = sorted(range(len(names)), key=lambda i: -shares[i])
    return tuple((names[i], shares[i]) for i in order)


def _layer_list(pairs: tuple[tuple[str, float], ...]) -> str:
    return ", ".join(f"{n} {s:.0%}" for n, s in pairs[:TOP_LAYERS]) or "-"


def _stat_line(
    label: str, pairs: list[tuple[str, float]], suffix: str = "", prefix: str = ""
) -> str:
    """``label  name value ...`` with the finite values only; says so when none is finite."""
    shown = [f"{name} {_g(x)}" for name, x in pairs if x is not None and math.isfinite(x)]
    if not shown:
        return f"  {label:<13} not measured (the warm-up ended before any was taken)"
    return f"  {label:<13} {prefix}" + "  ".join(shown) + (suffix if shown else "")


def _g(x: float | None) -> str:
    """Three significant digits, compact."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.3g}"
