"""Fixed-threshold clipping: global norm and element value."""

from __future__ import annotations

import math

import torch

from autoclip import functional as F
from autoclip.clippers._base import BaseClipper
from autoclip.clippers._checks import check_positive
from autoclip.clippers._normbased import NormBasedClipper
from autoclip.clippers._registry import register_clipper


@register_clipper("norm", "scale all gradients so their global norm is at most max_norm")
class NormClip(NormBasedClipper):
    """Global norm clipping, identical to ``torch.nn.utils.clip_grad_norm_``.

    ``g <- g * min(1, max_norm / (||g|| + 1e-6))`` with ``||g||`` the ``norm_type`` norm of
    all gradients concatenated (Pascanu et al. 2013).

    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> p.grad = torch.tensor([3.0, 4.0])  # norm 5
    >>> res = NormClip(max_norm=1.0)([p])
    >>> round(float(res.total_norm), 3), [round(v, 3) for v in p.grad.tolist()]
    (5.0, [0.6, 0.8])
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0, nonfinite: str = "skip") -> None:
        check_positive("max_norm", max_norm)
        self.max_norm = max_norm
        super().__init__(norm_type=norm_type, nonfinite=nonfinite)

    def _initial_state(self):
        return {"max_norm": torch.tensor(float(self.max_norm))}

    @property
    def norm_threshold(self) -> float:
        return float(self.max_norm)

    def _clip(self, params, grads, total, finite):
        # torch computes `max_norm / (norm + 1e-6)` with max_norm a Python float (a reciprocal
        # then a multiply, in the norm's dtype); passing the float, not a tensor, keeps the
        # clipped gradients bit-identical to clip_grad_norm_ in every dtype.
        clipped = self._scale_to(grads, total, finite, float(self.max_norm))
        return self._state["max_norm"].to(total.dtype), clipped, finite


def _on_host(grads: list[torch.Tensor]) -> bool:
    """Whether every gradient is a plain tensor in host memory (where per-tensor loops and
    branches are free)."""
    return all(type(g) is torch.Tensor and g.is_cpu for g in grads)


@register_clipper("value", "clamp every gradient element to [-clip_value, clip_value]")
class ValueClip(BaseClipper):
    """Element-wise clamp, identical to ``torch.nn.utils.clip_grad_value_``.

    ``clipped`` reports whether any element lay outside ``[-clip_value, clip_value]``.

    On the host: a foreach norm, the extremes (for ``clipped``), a foreach clamp. On an
    accelerator every step is a foreach kernel, with no host read.

    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(3))
    >>> p.grad = torch.tensor([0.5, -2.0, 3.0])
    >>> res = ValueClip(clip_value=1.0)([p])
    >>> p.grad.tolist(), bool(res.clipped)
    ([0.5, -1.0, 1.0], True)
    """

    def __init__(self, clip_value: float, norm_type: float = 2.0, nonfinite: str = "skip") -> None:
        check_positive("clip_value", clip_value)
        self.clip_value = clip_value
        self._extremes: list[torch.Tensor] | None = None  # from _total_norm, for _clip
        super().__init__(norm_type=norm_type, nonfinite=nonfinite)

    def _initial_state(self):
        return {"clip_value": torch.tensor(float(self.clip_value))}

    def _total_norm(self, grads):
        self._extremes = None
        if not grads or not _on_host(grads):
            return F.total_norm(grads, self.norm_type)
        # The host reads each gradient twice: one foreach norm (as F.total_norm, so the total
        # is bit-identical to it), and aminmax for whether anything lies outside the bounds
        # (vector_norm(ord=inf) is ~5x slower on CPU); then one foreach clamp in _clip.
        self._extremes = [e for g in grads for e in torch.aminmax(g)]
        return F.total_norm(grads, self.norm_type)

    def _clip(self, params, grads, total, finite):
        v = float(self.clip_value)
        threshold = self._state["clip_value"]
        extremes, self._extremes = self._extremes, None
        skip = self.nonfinite == "skip"
        if not grads:
            return threshold, torch.zeros((), dtype=torch.bool, device=total.device), finite
        if extremes is None:  # an accelerator: foreach kernels, no per-tensor launches
            clipped = F.total_norm(grads, math.inf) > v
            torch._foreach_clamp_min_(grads, -v)
            torch._foreach_clamp_max_(grads, v)
            if skip:  # zero a non-finite step without a sync; zero_nonfinite_ clears NaN
                F.scale_(grads, finite.to(total.dtype))
            return threshold, clipped, finite
        clipped = torch.stack(extremes).abs().max() > v
        if skip and not bool(finite):  # on the host this check is free
            torch._foreach_zero_(grads)
        else:
            F.clamp_(grads, v)
        return threshold, clipped, finite
