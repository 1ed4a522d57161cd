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

With ``spike="skip"`` a spike is not clipped but skipped (``attach`` leaves the optimizer
untouched), and it does not enter the EMA at all (axolotl's and llm.c's guard). The state is
float32 (MPS has no float64): the variance is updated as ``var + w (g d^2 - var)`` from the
deviation ``d``, never as a difference of large second moments, so it keeps ~7 significant
digits whatever the scale of the norms.
"""

from __future__ import annotations

import math

import torch

from autoclip.clippers import _loss
from autoclip.clippers._base import SPIKE_POLICIES
from autoclip.clippers._checks import check_choice, check_fraction, check_positive
from autoclip.clippers._normbased import NormBasedClipper
from autoclip.clippers._registry import register_clipper
from autoclip.errors import ConfigError

CLIP_OPTIONS = ("adaptive_scaling", "mean")


@register_clipper("zscore", "clip norm spikes more than z_thresh EMA deviations above (ZClip)")
class ZScoreClip(NormBasedClipper):
    """Clip norm spikes: ``z = (||g|| - mu) / sigma > z_thresh`` against an EMA (ZClip).

    Kumar, Owen, Ashkboos, Hoefler, Alistarh 2025, "ZClip: Adaptive Spike Mitigation for LLM
    Pre-Training" (arXiv:2504.02507). After ``warmup_steps`` that seed ``mu`` and ``sigma``,
    a spike is clipped to ``mu + (z_thresh**2 / z) * sigma`` (``clip_option=
    "adaptive_scaling"``, ZClip's reciprocal rule) or to ``mu`` (``"mean"``); the EMA is then
    updated with the clipped norm, ``mu <- alpha mu + (1 - alpha) n``,
    ``sigma^2 <- alpha sigma^2 + (1 - alpha) (n - mu)^2``. Defaults are ZClip's published
    ones. :attr:`spike_bound` is where the next step would count as a spike.

    >>> import torch
    >>> clip = ZScoreClip(z_thresh=2.0, warmup_steps=4)
    >>> p = torch.nn.Parameter(torch.zeros(1))
    >>> for norm in (1.0, 1.2, 0.8, 1.0):  # warm-up: mean 1, std ~0.14, never clipped
    ...     p.grad = torch.tensor([norm])
    ...     res = clip([p])
    >>> round(clip.spike_bound, 3)
    1.283
    >>> p.grad = torch.tensor([10.0])  # a spike: z ~ 64
    >>> res = clip([p])
    >>> bool(res.clipped), round(p.grad.item(), 3)
    (True, 1.009)
    """

    adaptive = True

    def __init__(
        self,
        z_thresh: float = 2.5,
        alpha: float = 0.97,
        warmup_steps: int = 25,
        clip_option: str = "adaptive_scaling",
        norm_type: float = 2.0,
        nonfinite: str = "skip",
        spike: str = "clip",
        loss_z: float | None = None,
        loss_window: int = 100,
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
        check_choice("spike", spike, SPIKE_POLICIES)
        self.spike = spike
        # A loss guard (off by default): 100 steps are enough for a stable median and MAD.
        _loss.check_loss_guard(loss_z, loss_window)
        self.loss_z = loss_z
        self.loss_window = loss_window
        self.z_thresh = z_thresh
        self.alpha = alpha
        self.warmup_steps = warmup_steps
        self.clip_option = clip_option
        self._table: torch.Tensor | None = None  # built on first use, on the norms' device
        super().__init__(norm_type=norm_type, nonfinite=nonfinite)

    def _initial_state(self):
        extra = {} if self.loss_z is None else _loss.initial_state(self.loss_window)
        return {**extra, **self._norm_state()}

    def _norm_state(self):
        zero = torch.zeros((), dtype=torch.float32)
        return {
            "count": torch.zeros((), dtype=torch.long),  # finite norms seen
            "mean": zero.clone(),
            "var": zero.clone(),
        }

    def _coefficients(self, device: torch.device) -> torch.Tensor:
        """Per-step constants, row ``min(count, warmup_steps)``: ``[w, g, limit, pad]``.

        Warm-up and EMA share one update. With ``d = n - mean`` (``n`` the norm, clipped)::

            mean <- mean + w d          var <- var + w (g d^2 - var)

        For the k-th warm-up norm, ``w = 1/k, g = (k-1)/k`` is Welford's running mean and
        population variance (what ZClip seeds the EMA with); after it, ``w = 1 - alpha,
        g = alpha^2`` is ZClip's EMA (its variance uses the updated mean: ``n - mean' =
        alpha d``). ``limit`` (the spike z-score) and ``pad`` (added to the reported bound)
        are ``inf`` during warm-up, so nothing is clipped there, without a branch.
        """
        table = self._table
        if table is None or table.device != device:
            rows = [
                [1 / k, (k - 1) / k, math.inf, math.inf] for k in range(1, self.warmup_steps + 1)
            ]
            rows.append([1 - self.alpha, self.alpha**2, self.z_thresh, 0.0])
            table = torch.tensor(rows, dtype=torch.float32, device=device)
            self._table = table
        return table

    @property
    def spike_bound(self) -> float:
        """The norm above which the next step counts as a spike: ``mu + z_thresh * sigma`` of
        the EMA (``inf`` while still in warm-up). Reads the state on the host (a sync)."""
        st = self._state
        if int(st["count"]) < self.warmup_steps:
            return math.inf
        return float(st["mean"]) + self.z_thresh * math.sqrt(float(st["var"]))

    @property
    def norm_threshold(self) -> float:
        """:attr:`spike_bound`: the norm the next step is clipped above."""
        return self.spike_bound

    def _observe(self, total, finite):
        st = self._state
        x = total.to(torch.float32)
        table = self._coefficients(x.device)
        # index_select, not table[count]: indexing with a 0-dim tensor calls .item() (a sync).
        row = table.index_select(0, st["count"].clamp(max=self.warmup_steps).view(1))
        w, g, limit, pad = row[0].unbind()
        mean, var = st["mean"], st["var"]
        std = var.sqrt()
        z = (x - mean) / std.clamp(min=1e-12)
        spike = z > limit
        bound = torch.add(mean, std, alpha=self.z_thresh) + pad  # inf during warm-up
        if self.clip_option == "adaptive_scaling":
            # mean + (z_thresh**2 / z) * std; z > z_thresh wherever this value is used.
            target = torch.addcdiv(mean, std, z.clamp(min=self.z_thresh), value=self.z_thresh**2)
        else:
            target = mean
        threshold = torch.where(spike, target, bound)
        d = torch.minimum(x, threshold) - mean  # the EMA sees the clipped norm
        if self.spike == "skip":  # ...or, when spikes are skipped, nothing of them
            finite = finite & ~spike
        st["mean"] = torch.where(finite, torch.addcmul(mean, w, d), mean)
        st["var"] = torch.where(finite, torch.lerp(var, g * d * d, w), var)
        st["count"] += finite
        return threshold.to(total.dtype), (spike if self.spike == "skip" else None)
