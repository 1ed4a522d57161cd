"""The built-in clippers' range rules: a starting value and a search range from the warm-up.

Each rule reads :class:`~autoclip.stats.GradStats` (duck-typed: only attributes are read, so
this module does not import the statistics) and the measured global-norm threshold, the
norm candidate's ``max_norm``. These are the rules ``propose`` applies (its module docstring
gives the reasons); they live here so that the registry carries them, one entry a clipper.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# ZClip's published defaults (Kumar et al. 2025).
ZSCORE_ALPHA = 0.97
ZSCORE_WARMUP = 25
ZSCORE_DEFAULT = 2.5
# AGC's published clipping ratio for large batches (Brock et al. 2021).
AGC_DEFAULT = 0.01


def sig(x: float, digits: int = 2) -> float:
    """Round to ``digits`` significant digits: thresholds are not known to more."""
    if not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{digits}g}")


def positive(x: float, fallback: float) -> float:
    return x if math.isfinite(x) and x > 0 else fallback


def _settled(st: Any) -> np.ndarray:
    return np.asarray(st.settled_norms, dtype=float)


def normal_sd(st: Any) -> float:
    """Standard deviation of the normal regime's norms (settled, spikes removed)."""
    spikes = set(st.spike_steps)
    normal = [
        v
        for i, v in enumerate(st.norms)
        if i >= st.settle_step and i not in spikes and math.isfinite(v)
    ]
    if len(normal) >= 2:
        return float(np.std(normal, ddof=1))
    settled = _settled(st)
    return float(np.std(settled)) if settled.size >= 2 else 0.0


# -- candidates: (stats, threshold) -> (params, reason) ------------------------------------------
def norm_candidate(st: Any, threshold: float) -> tuple[dict[str, Any], str]:
    return {"max_norm": sig(threshold)}, "the measured norm threshold"


def value_candidate(st: Any, threshold: float) -> tuple[dict[str, Any], str]:
    return (
        {"clip_value": sig(positive(st.values.p99, threshold))},
        "the 99th percentile of the sampled |g| elements in the settled part",
    )


def quantile_candidate(st: Any, threshold: float) -> tuple[dict[str, Any], str]:
    settled = _settled(st)
    below = float((settled <= threshold).mean()) if settled.size else 0.5
    q = float(np.clip(round(below, 2), 0.1, 0.99))
    # at least 20 expected exceedances of the quantile in the window, 100 to 1000 steps
    window = int(np.clip(math.ceil(20 / (1 - q)), 100, 1000))
    reason = (
        f"{q:.0%} of settled steps are below max_norm={threshold:.3g}: warm-started, it starts "
        "at the fixed threshold and follows the level"
    )
    return {"quantile": q, "window": window}, reason


def zscore_candidate(st: Any, threshold: float) -> tuple[dict[str, Any], str]:
    level = positive(st.end_level, st.median)
    p50 = positive(st.normal.p50, level)
    sd = normal_sd(st)
    mean = positive(st.normal_mean, p50)
    edge = positive(st.normal.p95, mean)
    z = (edge - mean) / sd if sd > 0 else ZSCORE_DEFAULT
    z = float(np.clip(round(z, 1), 1.5, 4.0))
    warmup = max(1, min(ZSCORE_WARMUP, len(st.settled_norms)))
    return (
        {"z_thresh": z, "alpha": ZSCORE_ALPHA, "warmup_steps": warmup},
        f"the normal regime's 95th percentile is {z:.1f} standard deviations above its mean",
    )


def agc_candidate(st: Any, threshold: float) -> tuple[dict[str, Any], str]:
    return (
        {"clipping": sig(positive(st.agc_ratios.p90, AGC_DEFAULT))},
        "the 90th percentile of the unit-wise |G_i|/|W_i| ratios in the settled part",
    )


# -- ranges: (stats, params) -> (low, high) -------------------------------------------------------
# A max_norm search spans 1.5 decades either side of the candidate. The measured candidate
# misses the full-length optimum by more than a decade on some seeds (on the design tasks'
# 12-point grids: 17x on relu_rnn, 26x on digits_mlp; studies/results/rung_study/), and tune's
# ladder of 9 then lands about 2.4x apart, as dense as a 12-point grid over 0.01..100.
NORM_SPAN = 10**1.5


def norm_range(st: Any, p: dict[str, Any]) -> tuple[float, float]:
    # from the candidate / 31.6 (every step clipped: normalised-gradient descent) to
    # candidate x 31.6 (past the loose end of the 5-10x rule of thumb); after a warm-up that
    # blew up, only a decade up: looser than that is where it blew up
    m = p["max_norm"]
    up = 10.0 if getattr(st, "diverged", False) else NORM_SPAN
    return sig(m / NORM_SPAN), sig(up * m)


def value_range(st: Any, p: dict[str, Any]) -> tuple[float, float]:
    cv = p["clip_value"]
    v50 = positive(st.values.p50, cv / 10)
    return sig(min(v50, cv / 3)), sig(10 * cv)


def quantile_range(st: Any, p: dict[str, Any]) -> tuple[float, float]:
    # from AutoClip's published 10th percentile to clipping only the top 1%
    return min(0.1, p["quantile"]), 0.99


def zscore_range(st: Any, p: dict[str, Any]) -> tuple[float, float]:
    z = p["z_thresh"]
    return min(1.5, z), max(4.0, z)


def agc_range(st: Any, p: dict[str, Any]) -> tuple[float, float]:
    c = p["clipping"]
    return sig(c / 10), sig(c * 10)


BUILTIN: dict[str, dict[str, Any]] = {
    "norm": dict(
        param="max_norm", log=True, bounds=(0.0, math.inf), candidate=norm_candidate,
        search_range=norm_range, unit="global norm",
    ),
    "value": dict(
        param="clip_value", log=True, bounds=(0.0, math.inf), candidate=value_candidate,
        search_range=value_range, unit="gradient element",
    ),
    "quantile": dict(
        param="quantile", log=False, bounds=(0.0, 1.0), candidate=quantile_candidate,
        search_range=quantile_range, unit="fraction of steps",
    ),
    "zscore": dict(
        param="z_thresh", log=False, bounds=(0.0, math.inf), candidate=zscore_candidate,
        search_range=zscore_range, unit="standard deviations",
    ),
    "agc": dict(
        param="clipping", log=True, bounds=(0.0, math.inf), candidate=agc_candidate,
        search_range=agc_range, unit="ratio",
    ),
}  # fmt: skip
