"""Clippers that scale every gradient by one factor, ``min(1, threshold / total_norm)``."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from autoclip import functional as F
from autoclip.clippers import _loss
from autoclip.clippers._base import _FALSE, _TRUE, BaseClipper


class NormBasedClipper(BaseClipper):
    """A clipper that scales all gradients by ``min(1, threshold / total_norm)``.

    Subclasses only decide the threshold, in :meth:`_observe`, from the total norm.
    """

    scale_invariant = True

    def _clip(self, params, grads, total, finite):
        loss_z, loss = getattr(self, "loss_z", None), self._loss
        guard = loss_z is not None and loss is not None
        if guard:  # a loss spike is skipped and, like a non-finite step, enters no history
            finite = finite & ~_loss.loss_spike(self._state, loss, loss_z)
        out = self._observe(total, finite)
        # A bare threshold from a subclass written before spike policies: no spike.
        threshold, spike = out if isinstance(out, tuple) else (out, None)
        keep = finite if spike is None else finite & ~spike
        if guard:
            _loss.record_loss(self._state, loss, keep)
        return threshold, self._scale_to(grads, total, keep, threshold), keep

    def _scale_to(
        self, grads: list[Tensor], total: Tensor, keep: Tensor, max_norm: Tensor | float
    ) -> Tensor:
        """Scale ``grads`` by ``min(1, max_norm / (total + 1e-6))`` (0 for a skipped step);
        return whether that scaled them down."""
        coef = F.norm_clip_coef(total, max_norm)
        if keep is _TRUE and isinstance(max_norm, float):
            # A finite host step (the norm was read): decide "clipped" in Python, with the
            # same floating-point operations torch ran for coef, instead of a kernel.
            clipped = _TRUE if _coef_below_one(self._total_f, max_norm, total.dtype) else _FALSE
        else:
            clipped = coef < 1.0
        if self.may_skip and keep is not _TRUE:  # _TRUE: a finite host step, nothing to zero
            coef = torch.where(keep, coef, 0.0)
        if grads:
            F.scale_(grads, coef)
        return clipped


def _coef_below_one(total: float, max_norm: float, dtype: torch.dtype) -> bool:
    """``F.norm_clip_coef(total, max_norm) < 1`` on the host: ``max_norm * (1 / (total +
    1e-6))`` rounded as torch rounds it (float64 natively, float32 through numpy)."""
    if dtype == torch.float64:
        return max_norm * (1.0 / (total + F.NORM_EPS)) < 1.0
    f = np.float32
    return bool(f(max_norm) * (f(1.0) / (f(total) + f(F.NORM_EPS))) < f(1.0))
