"""Quantile clipping: clip the global norm to a quantile of the norms seen so far.

The idea is AutoClip's (Seetharaman et al. 2020, "AutoClip: Adaptive Gradient Clipping for
Source Separation Networks"): threshold_t = percentile_p(||g_1||, ..., ||g_t||). The original
keeps the whole history and recomputes the percentile every step (O(t) per step). Here the
per-step cost does not grow with t:

* ``method="window"``: the exact ``quantile`` of the last ``window`` norms (the current one
  included, as in AutoClip), kept in a ring buffer on the device. Equals
  ``numpy.quantile(last_window, quantile)`` (linear interpolation).
* ``method="stream"``: the O(1) geometric update of Andrew et al. 2021 ("Differentially
  Private Learning with Adaptive Clipping", eq. 1): ``C <- C * exp(-lr * (b - quantile))``
  with ``b = 1`` if the step was not clipped. The long-run fraction of unclipped steps
  converges to ``quantile`` whatever the norm distribution.

``quantile`` is the fraction of steps meant to pass unclipped: AutoClip's recommended
10th percentile is ``quantile=0.1``.

Spikes: with ``spike="skip"``, a norm above ``spike_factor`` times the threshold of the
history so far is a spike: the step is skipped (``attach`` leaves the optimizer untouched)
and the norm never enters the history, so one outlier cannot raise the threshold it is judged
by. Norms between the threshold and that bound are clipped as usual. ``spike="clip"``
(default) clips every step to the threshold, spikes included.
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

METHODS = ("window", "stream")


@register_clipper("quantile", "clip the global norm to a quantile of recent norms (AutoClip)")
class QuantileClip(NormBasedClipper):
    """Clip the global norm to the ``quantile`` of the recent norms (AutoClip).

    Seetharaman, Wichern, Pardo, Le Roux 2020, "AutoClip: Adaptive Gradient Clipping for
    Source Separation Networks" (arXiv:2007.14469)::

        c_t = percentile_p(||g_1||, ..., ||g_t||)        g_t <- g_t * min(1, c_t / ||g_t||)

    with the history limited to the last ``window`` norms (``method="window"``, exact), or
    replaced by the geometric update of Andrew et al. 2021 (``method="stream"``, O(1)):
    ``c <- c * exp(-lr * (b - quantile))``, ``b = 1`` when the step was not clipped.
    ``quantile`` is the fraction of steps meant to pass unclipped (AutoClip's 10th percentile
    is ``quantile=0.1``). ``warm_start(norms)`` fills the history from the probe.

    >>> import torch
    >>> clip = QuantileClip(quantile=0.5, window=3)
    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> for norm in (1.0, 3.0, 2.0):  # the window holds 1, 3, 2: its median is 2
    ...     p.grad = torch.tensor([norm, 0.0])
    ...     res = clip([p])
    >>> float(res.threshold), round(p.grad[0].item(), 4)  # at the threshold: 2 * 2 / (2 + 1e-6)
    (2.0, 2.0)
    """

    adaptive = True

    def __init__(
        self,
        quantile: float = 0.9,
        window: int = 1000,
        method: str = "window",
        lr: float = 0.2,
        norm_type: float = 2.0,
        nonfinite: str = "skip",
        spike: str = "clip",
        spike_factor: float = 3.0,
        loss_z: float | None = None,
        loss_window: int = 100,
    ) -> None:
        # 0.9: clip only the top tenth of steps, the conservative end of AutoClip's range.
        check_fraction("quantile", quantile)
        if not (isinstance(window, int) and window >= 1):
            raise ConfigError(f"`window` must be an int >= 1, but got {window!r}")
        if method not in METHODS:
            raise ConfigError(f"`method` must be one of {METHODS}, but got {method!r}")
        check_positive("lr", lr)
        check_choice("spike", spike, SPIKE_POLICIES)
        # 3x the threshold: far outside the spread of ordinary steps, where an update is more
        # likely a bad batch than signal (only used with spike="skip").
        check_positive("spike_factor", spike_factor)
        self.spike = spike
        self.spike_factor = spike_factor
        # A loss guard (off by default): 100 steps are enough for a stable median and MAD.
        _loss.check_loss_guard(loss_z, loss_window)
        self.loss_z = loss_z
        self.loss_window = loss_window
        self.quantile = quantile
        self.window = window
        self.method = method
        self.lr = lr  # 0.2 is Andrew et al.'s geometric learning rate
        # C's factor after an unclipped step (b = 1) and after a clipped one (b = 0).
        self._factors = (math.exp(-lr * (1.0 - quantile)), math.exp(lr * quantile))
        super().__init__(norm_type=norm_type, nonfinite=nonfinite)

    def _initial_state(self):
        extra = {} if self.loss_z is None else _loss.initial_state(self.loss_window)
        return {**extra, **self._norm_state()}

    def _norm_state(self):
        if self.method == "window":
            # NaN marks an empty slot; nanquantile ignores them, so no count is needed.
            return {
                "buffer": torch.full((self.window,), math.nan),
                "pos": torch.zeros(1, dtype=torch.long),
            }
        return {"threshold": torch.tensor(math.nan)}

    def _observe(self, total, finite):
        st = self._state
        x = total.to(torch.float32)
        skip_spikes = self.spike == "skip"
        if self.method == "window":
            buf, pos = st["buffer"], st["pos"]  # pos: [1], the slot the next norm goes to
            spike = None
            if skip_spikes:  # judged against the history so far (NaN while empty: no spike)
                spike = x > self.spike_factor * torch.nanquantile(buf, self.quantile)
                finite = finite & ~spike
            buf.index_copy_(0, pos, torch.where(finite, x, buf.index_select(0, pos)))
            st["pos"] = (pos + finite) % self.window
            threshold = torch.nanquantile(buf, self.quantile)
        else:
            c = st["threshold"]
            spike = (x > self.spike_factor * c) if skip_spikes else None  # NaN C: no spike
            if spike is not None:
                finite = finite & ~spike
            threshold = torch.where(torch.isnan(c), x, c)  # first finite norm seeds C
            # exp(-lr * (b - quantile)) takes one of two values: pick it instead of computing it.
            down, up = self._factors
            updated = threshold * torch.where(x <= threshold, down, up)
            st["threshold"] = torch.where(finite, updated, c)
        return threshold.to(total.dtype), spike

    def warm_start(self, norms):
        """Window: fill the buffer with the last ``window`` finite norms. Stream: start C at
        the empirical ``quantile`` of the norms, where the geometric update would converge."""
        values = torch.as_tensor(norms, dtype=torch.float32).flatten()
        values = values[torch.isfinite(values)]
        if self.method == "window":
            # One write instead of a step per norm: the state equals feeding the norms one at
            # a time (only the last `window` of them survive in the ring), in O(window).
            buf, pos = self._state["buffer"], self._state["pos"]
            n = values.numel()
            last = values[max(n - self.window, 0) :].to(buf.device)
            slots = pos + (n - last.numel()) + torch.arange(last.numel(), device=buf.device)
            buf.index_copy_(0, slots % self.window, last)
            self._state["pos"] = (pos + n) % self.window
            return self
        if values.numel():
            device = self._state["threshold"].device
            self._state["threshold"] = torch.quantile(values, self.quantile).to(device)
        return self
