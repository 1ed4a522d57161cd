"""Gradient statistics: a :class:`GradTrace` in, a frozen, serialisable :class:`GradStats` out.

What is measured, and how (all on the finite steps; non-finite ones are counted as spikes):

* **Percentiles** of the global norm over the whole warm-up (p50 ... max, mean, median, MAD).
* **Blow-up**: the first step whose loss was NaN/inf or 10x the first loss, if any; when the
  warm-up diverged, the norms before it are the only ones from a model still under control.
* **The settled part.** Norms usually fall (sometimes rise) over the first steps, so numbers
  from the whole warm-up are biased towards the start. The log-norm is smoothed with a running
  median; the warm-up counts as settled from the first step after which the smoothed level
  stays within a factor ``SETTLE_TOL`` (1.5) of its final level (the median of the last
  quarter), the factor widened where the norms are so noisy that the running median itself
  wanders more. At least the last quarter (and at least 20 steps) always counts as settled.
* **Trend**: the slope of the log-norm per step, fitted with scikit-learn's ``HuberRegressor``
  (a robust line: spikes do not tilt it), over the whole warm-up and over the settled part;
  the ratio of the last quarter's median to the first quarter's; and whether the settled part
  still **drifts**: at its fitted rate the level would move by more than 2x over another
  warm-up of the same length, and the slope is more than three standard errors from zero.
* **Spikes.** The residual ``r = log(norm) - running median`` is what is left once the level
  is removed. A Gaussian mixture (scikit-learn ``GaussianMixture``, one or two components,
  chosen by BIC) on ``r`` separates the normal regime from a regime of spikes; a step is a
  spike when the spike component claims it and it is at least 2x its local level and 3
  standard deviations above the normal component (0.13% of a Gaussian normal regime).
  Without a separate component only extreme outliers count: ``r > z sigma_MAD``, the modified
  z-score of Iglewicz & Hoaglin with z = 3.5, raised for long warm-ups so that noise alone
  flags a spike in about 1% of them (z = 3.7 at 100 steps), again with the 2x floor. The
  **normal regime** is then the settled steps that are not spikes.
* **Layers**: each parameter tensor's share of the squared gradient norm in the normal
  regime, and its share of the *excess* squared norm at spike steps (what the spike added above
  that layer's typical value): the layers that carry the norm, and the ones spikes come from.
* **Values**: percentiles of the sampled ``|g|`` elements and of the AGC unit ratios
  ``||G_i|| / ||W_i||`` (units with weights above AGC's eps), from the settled sampled steps.
"""

from __future__ import annotations

import math
from dataclasses import fields
from statistics import NormalDist

import numpy as np

from autoclip._gradstats import GradStats, Percentiles
from autoclip.errors import ConfigError
from autoclip.probe import GradTrace

__all__ = ["GradStats", "Percentiles", "compute_stats"]

# The smoothed log-norm counts as settled within a factor 1.5 of its final level: finer than
# that is minibatch noise, coarser would let the start-up transient into the statistics.
SETTLE_TOL = math.log(1.5)
# A loss 10x its first value marks where a blow-up began (the probe stops at 1000x).
BLOWUP = 10.0
# A spike is at least twice its local level: smaller bumps are ordinary minibatch noise.
MIN_SPIKE_FACTOR = 2.0
# A level that, at the settled part's rate, moves more than 2x per warm-up length is drift
# (if the slope is beyond noise too).
DRIFT = math.log(2.0)
# Modified z-score cut (Iglewicz & Hoaglin 1993) for the fallback outlier rule, raised for
# long warm-ups so that noise alone flags a spike in about FALSE_SPIKE_RATE of them.
ROBUST_Z = 3.5
FALSE_SPIKE_RATE = 0.01
# Below this many finite steps a two-component mixture is not worth fitting.
MIN_STEPS_FOR_MIXTURE = 20
# The settled part is at least the last quarter of the warm-up and at least this many steps.
MIN_SETTLED = 20
_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


# ---------------------------------------------------------------------------------------------
# The computations
# ---------------------------------------------------------------------------------------------
def running_median(x: np.ndarray, window: int) -> np.ndarray:
    """Centred running median; the window shrinks at the ends."""
    n = len(x)
    half = window // 2
    return np.array([np.median(x[max(0, i - half) : i + half + 1]) for i in range(n)])


def _smooth_window(n: int) -> int:
    # a tenth of the warm-up (at least 5, odd): wider than a burst of spikes, narrower than
    # the start-up transient
    w = max(5, n // 10)
    return w + 1 - w % 2


def settle_index(log_norms: np.ndarray, smooth: np.ndarray, tol: float = SETTLE_TOL) -> int:
    """Index (into the finite steps) where the smoothed log-norm stays near its final level."""
    n = len(log_norms)
    if n == 0:
        return 0
    tail = max(min(n, MIN_SETTLED), n // 4)
    final = float(np.median(log_norms[n - tail :]))
    outside = np.flatnonzero(np.abs(smooth - final) > tol)
    first = int(outside[-1]) + 1 if outside.size else 0
    return min(first, n - tail)


def robust_slope(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(slope, se)``: slope of ``y`` per unit of ``t`` by Huber regression, and its standard
    error ``sigma * sqrt(12 / (m^3 - m))`` for ``m`` evenly spaced points, with ``sigma`` the
    robust scale of the residuals around the line (``(0, inf)`` for fewer than 3 points)."""
    m = len(t)
    if m < 3 or np.ptp(t) == 0:
        return 0.0, math.inf
    from sklearn.linear_model import HuberRegressor

    span = float(np.ptp(t))
    u = ((t - t[0]) / span).reshape(-1, 1)
    model = HuberRegressor(alpha=0.0, max_iter=200).fit(u, y)
    resid = y - model.predict(u)
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(resid - np.median(resid))))
    step = span / (m - 1)  # the spacing of the points, in units of t
    return float(model.coef_[0]) / span, sigma * math.sqrt(12 / (m**3 - m)) / step


def find_spikes(residual: np.ndarray) -> tuple[np.ndarray, int, float]:
    """Spike mask over ``residual`` (log-norm minus its running median).

    Returns ``(mask, regimes, sigma)`` where ``sigma`` is the normal regime's spread.
    """
    n = len(residual)
    floor = math.log(MIN_SPIKE_FACTOR)
    med = float(np.median(residual)) if n else 0.0
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(residual - med))) if n else 0.0
    # Without a separate spike regime only extreme outliers count: the cut grows with the
    # number of steps so that Gaussian noise alone gives a false spike in ~1% of warm-ups.
    z_cut = max(ROBUST_Z, NormalDist().inv_cdf(1 - FALSE_SPIKE_RATE / max(n, 1)))
    robust = residual > np.maximum(med + z_cut * sigma, floor)
    if n < MIN_STEPS_FOR_MIXTURE:
        return robust, 1, sigma
    from sklearn.mixture import GaussianMixture

    x = residual.reshape(-1, 1)
    # reg_covar: a 5% wobble is the finest structure worth a component; without it a
    # component collapses onto the points where the residual is exactly 0.
    fits = [GaussianMixture(k, reg_covar=0.05**2, random_state=0, n_init=2).fit(x) for k in (1, 2)]
    gm = min(fits, key=lambda m: m.bic(x))
    if gm.n_components == 1:
        return robust, 1, sigma
    means = gm.means_.ravel()
    sds = np.sqrt(gm.covariances_.ravel())
    lo, hi = int(np.argmin(means)), int(np.argmax(means))
    separated = means[hi] - means[lo] > 2 * sds[lo] and gm.weights_[hi] < 0.5
    if not separated:
        return robust, 1, sigma
    post = gm.predict_proba(x)[:, hi]
    mask = (post > 0.5) & (residual > max(means[lo] + 3 * sds[lo], floor))
    return mask, 2, float(sds[lo])


def compute_stats(trace: GradTrace) -> GradStats:
    """Robust statistics of ``trace`` (see the module docstring).

    >>> from autoclip.probe import GradTrace
    >>> trace = GradTrace(norms=(1.0, 2.0, 1.5, 1.2), losses=(1.0, 0.9, 0.8, 0.7),
    ...                   layer_names=("w",), layer_norms=((1.0,), (2.0,), (1.5,), (1.2,)))
    >>> compute_stats(trace).median
    1.35
    """
    if not isinstance(trace, GradTrace):
        raise ConfigError(f"compute_stats needs a GradTrace, but got {type(trace).__name__}")
    norms = np.asarray(trace.norms, dtype=float)
    finite = np.isfinite(norms) & (norms > 0)
    steps_f = np.flatnonzero(finite)  # step index of each finite norm
    x = np.log(norms[finite])  # log-norms of the finite steps
    n = len(x)
    if n == 0:
        raise ConfigError(
            "the trace has no finite, non-zero gradient norm to compute statistics from "
            f"({trace.steps_run} steps recorded; reason: {trace.reason or 'none'}); check "
            "that the loss depends on the parameters, or lower the learning rate"
        )
    vals = norms[finite]

    # settled part. The running median of w noisy points wanders by about
    # 1.25 sigma / sqrt(w) (its standard error): the tolerance is never tighter than three
    # of those, so noise alone does not keep the run "unsettled".
    w = _smooth_window(n)
    smooth = running_median(x, w)
    noise = _MAD_TO_SIGMA * float(np.median(np.abs(x - smooth)))
    tol = max(SETTLE_TOL, 3 * 1.2533 * noise / math.sqrt(w))
    i0 = settle_index(x, smooth, tol)
    settle_step = int(steps_f[i0])
    settled_mask = np.arange(n) >= i0

    # trend
    trend, _ = robust_slope(steps_f.astype(float), x)
    settled_trend, settled_se = robust_slope(steps_f[i0:].astype(float), x[i0:])
    q = max(1, n // 4)
    trend_ratio = float(math.exp(np.median(x[n - q :]) - np.median(x[:q])))
    # Drift: at the settled part's own rate, how far would the level move over another
    # warm-up of the same length? Drifting when more than DRIFT (2x) and the slope is more
    # than three standard errors from zero. The error comes from the scatter around the
    # fitted line, so a level that wanders (rather than trends) does not count as drift.
    drifting = abs(settled_trend) * trace.steps_run > DRIFT and abs(settled_trend) > 3 * settled_se
    change = settled_trend * (steps_f[-1] - settle_step)  # the fitted move, as observed

    # spikes
    residual = x - smooth
    spike_mask, regimes, sigma = find_spikes(residual)
    nonfinite = tuple(int(i) for i in np.flatnonzero(~np.isfinite(norms)))
    spike_steps = tuple(sorted({int(s) for s in steps_f[spike_mask]} | set(nonfinite)))
    spike_factor = (
        float(math.exp(np.median(residual[spike_mask]))) if spike_mask.any() else math.nan
    )
    normal_mask = settled_mask & ~spike_mask
    if not normal_mask.any():  # everything settled is a spike: fall back on the settled part
        normal_mask = settled_mask
    normal_vals = vals[normal_mask]

    # layers
    layer = np.asarray(trace.layer_norms, dtype=float)  # [steps, layers]
    n_layers = len(trace.layer_names)
    if n_layers and layer.size:
        lf = layer[steps_f]  # finite steps only
        sq = np.where(np.isfinite(lf), lf, 0.0) ** 2
        normal_sq = sq[normal_mask].sum(axis=0)
        share = normal_sq / normal_sq.sum() if normal_sq.sum() > 0 else normal_sq
        typical = np.median(sq[normal_mask], axis=0)
        excess = np.clip(sq[spike_mask] - typical, 0.0, None).sum(axis=0)
        spike_share = excess / excess.sum() if excess.sum() > 0 else np.zeros(n_layers)
        w = np.asarray(trace.weight_norms, dtype=float)
        if w.shape == (n_layers,):
            ratio = np.median(lf[settled_mask] / np.maximum(w, 1e-3), axis=0)
        else:
            ratio = np.full(n_layers, math.nan)
    else:
        share = spike_share = ratio = np.zeros(n_layers)

    # sampled values, from the settled sampled steps when there are any
    values = _settled_sample(
        trace.value_sample, trace.value_counts, trace.sample_steps, settle_step
    )
    ratios = _settled_sample(
        trace.agc_ratio_sample, trace.agc_ratio_counts, trace.sample_steps, settle_step
    )

    losses = np.asarray(trace.losses, dtype=float)
    fl = losses[np.isfinite(losses)]
    blown = ~np.isfinite(losses)
    if fl.size and fl[0] > 0:
        blown |= losses > BLOWUP * fl[0]
    blowup_step = int(np.flatnonzero(blown)[0]) if blown.any() else None
    tail = max(1, len(fl) // 10)
    median = float(np.median(vals))
    return GradStats(
        steps=trace.steps_run,
        planned_steps=trace.planned_steps,
        stopped_early=trace.stopped_early,
        reason=trace.reason,
        diverged=trace.diverged,
        blowup_step=blowup_step,
        norms=tuple(float(v) for v in norms),
        losses=tuple(float(v) for v in losses),
        **_flat_percentiles(vals),
        mean=float(vals.mean()),
        median=median,
        mad=float(np.median(np.abs(vals - median))),
        settle_step=settle_step,
        settled=Percentiles.of(vals[settled_mask]),
        normal=Percentiles.of(normal_vals),
        normal_mean=float(normal_vals.mean()),
        normal_sigma=float(sigma),
        end_level=float(math.exp(np.median(x[n - q :]))),
        trend=trend,
        settled_trend=settled_trend,
        trend_ratio=trend_ratio,
        settled_change=float(math.exp(change)),
        drifting=bool(drifting),
        spike_steps=spike_steps,
        spike_rate=len(spike_steps) / trace.steps_run,
        spike_factor=spike_factor,
        nonfinite_steps=nonfinite,
        regimes=regimes,
        layer_names=tuple(trace.layer_names),
        layer_share=tuple(float(v) for v in share),
        layer_spike_share=tuple(float(v) for v in spike_share),
        layer_ratio=tuple(float(v) for v in ratio),
        values=Percentiles.of(values),
        agc_ratios=Percentiles.of(ratios),
        loss_start=float(fl[0]) if fl.size else math.nan,
        loss_end=float(np.median(fl[-tail:])) if fl.size else math.nan,
        optimizer=trace.optimizer,
        lr=trace.lr,
    )


def _flat_percentiles(vals: np.ndarray) -> dict[str, float]:
    p = Percentiles.of(vals)
    return {f.name: getattr(p, f.name) for f in fields(Percentiles)}


def _settled_sample(sample, counts, steps, settle_step: int) -> np.ndarray:
    """The part of a per-step sample taken at or after ``settle_step`` (all of it if none)."""
    a = np.asarray(sample, dtype=float)
    if not counts or sum(counts) != len(a):
        return a[np.isfinite(a)]
    ends = np.cumsum(counts)
    starts = ends - np.asarray(counts)
    keep = [i for i, s in enumerate(steps) if s >= settle_step]
    if keep:
        a = np.concatenate([a[starts[i] : ends[i]] for i in keep])
    return a[np.isfinite(a)]
