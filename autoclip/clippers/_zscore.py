"""Z-score spike clipping (ZClip: Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for
LLM Pre-Training").

An exponential moving average tracks the mean ``mu`` and variance ``sigma^2`` of the global
norm. After ``warmup_steps`` (whose mean and variance seed the EMA, and which are never
clipped), a step is a spike when ``z = (||g|| - mu) / sigma > z_thresh``; a spike is clipped to

* ``clip_option="adaptive_scaling"`` (ZClip's default): ``mu + (z_thresh**2 / z) * sigma``,
  so larger spikes are pulled down harder (the reciprocal rule);
* ``clip_option="mean"``: ``mu``.

The EMA is then updated with the *clipped* norm (so a spike does not inflate the statistics):
``mu <- alpha mu + (1 - alpha) n``; ``sigma^2 <- alpha sigma^2 + (1 - alpha)(n - mu)^2``.
When no spike, the reported threshold is the spike bound ``mu + z_thresh sigma``; during
warm-up it is ``inf``.
"""

from __future__ import annotations

import math

import torch

from autoclip.clippers._base import NormBasedClipper, check_fraction, check_positive
from autoclip.clippers._registry import register_clipper
from autoclip.errors import ConfigError

CLIP_OPTIONS = ("adaptive_scaling", "mean")


@register_clipper("zscore", "clip norm spikes more than z_thresh EMA deviations above (ZClip)")
class ZScoreClip(NormBasedClipper):
    adaptive = True

    def __init__(
        self,
        z_thresh: float = 2.5,
        alpha: float = 0.97,
        warmup_steps: int = 25,
        clip_option: str = "adaptive_scaling",
        norm_type: float = 2.0,
        nonfinite: str = "skip",
    ) -> None:
        # Defaults are ZClip's published ones.
        check_positive("z_thresh", z_thresh)
        check_fraction("alpha", alpha)
        if not (isinstance(warmup_steps, int) and warmup_steps >= 1):
            raise ConfigError(f"`warmup_steps` must be an int >= 1, but got {warmup_steps!r}")
        if clip_option not in CLIP_OPTIONS:
            raise ConfigError(
                f"`clip_option` must be one of {CLIP_OPTIONS}, but got {clip_option!r}"
            )
        self.z_thresh = z_thresh
        self.alpha = alpha
        self.warmup_steps = warmup_steps
        self.clip_option = clip_option
        super().__init__(norm_type=norm_type, nonfinite=nonfinite)

    def _initial_state(self):
        zero = torch.zeros((), dtype=torch.float64)
        return {
            "count": torch.zeros((), dtype=torch.long),  # finite norms seen
            "sum": zero.clone(),  # warm-up accumulators (float64: sums of squares)
            "sumsq": zero.clone(),
            "mean": zero.clone(),
            "var": zero.clone(),
        }

    def _observe(self, total, finite):
        st = self._state
        x = torch.where(finite, total.to(torch.float64), torch.zeros((), dtype=torch.float64,
                                                                      device=total.device))
        in_warmup = st["count"] < self.warmup_steps
        count = st["count"] + finite.long()
        # Warm-up: accumulate, and seed mean/var when the last warm-up norm arrives.
        w = (in_warmup & finite).to(torch.float64)
        s, ss = st["sum"] + w * x, st["sumsq"] + w * x * x
        n = count.clamp(min=1).to(torch.float64)
        seed_mean = s / n
        seed_var = (ss / n - seed_mean * seed_mean).clamp(min=0.0)
        # After warm-up: z-score against the EMA, clip spikes, update the EMA.
        mean, var = st["mean"], st["var"]
        std = var.sqrt()
        z = (x - mean) / std.clamp(min=1e-12)
        spike = z > self.z_thresh
        bound = mean + self.z_thresh * std
        if self.clip_option == "adaptive_scaling":
            target = mean + (self.z_thresh**2) / z.clamp(min=self.z_thresh) * std
        else:
            target = mean
        threshold = torch.where(spike, target, bound)
        kept = torch.minimum(x, threshold)
        ema_mean = self.alpha * mean + (1 - self.alpha) * kept
        ema_var = self.alpha * var + (1 - self.alpha) * (kept - ema_mean) ** 2
        live = finite & ~in_warmup
        st["mean"] = torch.where(in_warmup, seed_mean, torch.where(live, ema_mean, mean))
        st["var"] = torch.where(in_warmup, seed_var, torch.where(live, ema_var, var))
        st["sum"], st["sumsq"], st["count"] = s, ss, count
        threshold = torch.where(in_warmup, torch.full_like(threshold, math.inf), threshold)
        return threshold.to(total.dtype)
