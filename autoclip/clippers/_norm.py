"""Fixed-threshold clipping: global norm and element value."""

from __future__ import annotations

import torch

from autoclip import functional as F
from autoclip.clippers._base import BaseClipper, NormBasedClipper, check_positive
from autoclip.clippers._registry import register_clipper


@register_clipper("norm", "scale all gradients so their global norm is at most max_norm")
class NormClip(NormBasedClipper):
    """Global norm clipping, identical to ``torch.nn.utils.clip_grad_norm_``.

    ``g <- g * min(1, max_norm / (||g|| + 1e-6))`` with ``||g||`` the ``norm_type`` norm of
    all gradients concatenated (Pascanu et al. 2013).
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0, nonfinite: str = "skip") -> None:
        check_positive("max_norm", max_norm)
        self.max_norm = max_norm
        super().__init__(norm_type=norm_type, nonfinite=nonfinite)

    def _initial_state(self):
        return {"max_norm": torch.tensor(float(self.max_norm))}

    def _observe(self, total, finite):
        # torch multiplies by (python float max_norm) / (norm + 1e-6); a 0-dim float32 tensor
        # divided the same way gives the identical result in the norm's dtype.
        return self._state["max_norm"].to(total.dtype)


@register_clipper("value", "clamp every gradient element to [-clip_value, clip_value]")
class ValueClip(BaseClipper):
    """Element-wise clamp, identical to ``torch.nn.utils.clip_grad_value_``.

    ``clipped`` reports whether the pre-clip infinity norm exceeded ``clip_value``.
    """

    def __init__(
        self, clip_value: float, norm_type: float = 2.0, nonfinite: str = "skip"
    ) -> None:
        check_positive("clip_value", clip_value)
        self.clip_value = clip_value
        super().__init__(norm_type=norm_type, nonfinite=nonfinite)

    def _clip(self, params, grads, total, finite):
        v = float(self.clip_value)
        threshold = torch.tensor(v, device=total.device)
        if not grads:
            return threshold, torch.zeros((), dtype=torch.bool, device=total.device)
        peak = F.total_norm(grads, float("inf"))
        # Under "skip", a non-finite step clamps to [0, 0]: the finite elements and +-inf
        # become 0 in the same pass, and zero_nonfinite_ then clears any NaN.
        skip = self.nonfinite == "skip"
        bounds: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        for g in grads:
            key = (g.device, g.dtype)
            if key not in bounds:
                b = torch.tensor(v, dtype=g.dtype, device=g.device)
                if skip:
                    b = b * finite.to(g.device)
                bounds[key] = (-b, b)
            g.clamp_(*bounds[key])
        return threshold, peak > v
