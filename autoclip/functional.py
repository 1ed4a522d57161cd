"""Stateless, in-place operations on gradients.

Each clipping function returns the *pre-clip* total gradient norm: it is the statistic this
project lives on. Nothing here calls ``.item()`` or branches on a tensor's value, so none of it
synchronises an accelerator with the host (the one exception, documented on
:func:`zero_nonfinite_`, only branches when the gradients live in host memory, where a
"sync" costs nothing).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = [
    "agc_",
    "norm_from_unitwise",
    "clip_grad_norm_",
    "clip_grad_value_",
    "grads_of",
    "norm_clip_coef",
    "scale_",
    "total_norm",
    "unitwise_norm",
    "unitwise_norms",
    "zero_nonfinite_",
]

# torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6); using the same constant keeps
# NormClip bit-for-bit identical to it.
NORM_EPS = 1e-6


def _as_list(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        return [parameters]
    return list(parameters)


def grads_of(parameters: Tensor | Iterable[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Split ``parameters`` into (parameters that have a gradient, their gradients)."""
    params = [p for p in _as_list(parameters) if p.grad is not None]
    return params, [p.grad for p in params]


def total_norm(grads: list[Tensor], norm_type: float = 2.0, foreach: bool | None = None) -> Tensor:
    """Global ``norm_type`` norm of ``grads``, exactly as ``torch.nn.utils.get_total_norm``.

    An empty list gives ``tensor(0.)``.
    """
    return torch.nn.utils.get_total_norm(grads, norm_type=norm_type, foreach=foreach)


def _by_device_and_dtype(tensors: list[Tensor]) -> dict[tuple, list[Tensor]]:
    """Group tensors by (device, dtype): a foreach kernel takes one group at a time."""
    groups: dict[tuple, list[Tensor]] = defaultdict(list)
    for t in tensors:
        groups[(t.device, t.dtype)].append(t)
    return groups


def _foreach_ok(device: torch.device, foreach: bool | None) -> bool:
    return foreach is not False and device.type in ("cpu", "cuda", "xpu", "mps")


def scale_(grads: list[Tensor], coef: Tensor, foreach: bool | None = None) -> None:
    """Multiply every gradient in place by the 0-dim tensor ``coef`` (one kernel per group)."""
    for (device, _), group in _by_device_and_dtype(grads).items():
        c = coef.to(device)
        if _foreach_ok(device, foreach):
            torch._foreach_mul_(group, c)
        else:
            for g in group:
                g.mul_(c)


def norm_clip_coef(total: Tensor, max_norm: Tensor | float) -> Tensor:
    """``min(max_norm / (total + 1e-6), 1)``: torch's clip coefficient, without a branch."""
    return torch.clamp(max_norm / (total + NORM_EPS), max=1.0)


def zero_nonfinite_(grads: list[Tensor], finite: Tensor) -> None:
    """Replace NaN/inf gradient elements by 0 where ``finite`` is False.

    Call after the gradients were multiplied by a coefficient that is 0 for a non-finite step:
    the finite elements are then already 0 and this clears the NaN/inf ones, so the update is
    skipped rather than poisoning the weights. On the host the check is a free branch; on an
    accelerator the pass runs unconditionally (it is a no-op on finite gradients) so that the
    step still never waits for the device.
    """
    if not grads:
        return
    if finite.device.type == "cpu":
        if bool(finite):
            return
    for g in grads:
        g.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


@torch.no_grad()
def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    foreach: bool | None = None,
) -> Tensor:
    """Same contract as ``torch.nn.utils.clip_grad_norm_`` (returns the pre-clip total norm)."""
    _, grads = grads_of(parameters)
    total = total_norm(grads, norm_type, foreach)
    if grads:
        scale_(grads, norm_clip_coef(total, float(max_norm)), foreach)
    return total


@torch.no_grad()
def clip_grad_value_(
    parameters: Tensor | Iterable[Tensor],
    clip_value: float,
    norm_type: float = 2.0,
    foreach: bool | None = None,
) -> Tensor:
    """Clamp every element to ``[-clip_value, clip_value]``; returns the pre-clip total norm."""
    _, grads = grads_of(parameters)
    total = total_norm(grads, norm_type, foreach)
    v = float(clip_value)
    for (device, _), group in _by_device_and_dtype(grads).items():
        if _foreach_ok(device, foreach):
            torch._foreach_clamp_min_(group, -v)
            torch._foreach_clamp_max_(group, v)
        else:
            for g in group:
                g.clamp_(-v, v)
    return total


def unitwise_norm(x: Tensor) -> Tensor:
    """Norm per output unit (Brock et al. 2021): over all dims but the first; whole tensor if 0/1-D.

    Shape: ``[out, 1, 1, ...]`` for an ``[out, ...]`` weight; ``[]`` for a bias or scalar.
    """
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


def unitwise_norms(grads: list[Tensor]) -> list[Tensor]:
    """:func:`unitwise_norm` of every tensor in ``grads``."""
    return [unitwise_norm(g) for g in grads]


def norm_from_unitwise(norms: list[Tensor]) -> Tensor:
    """Global 2-norm assembled from unit norms (float32 or wider), without touching the grads."""
    if not norms:
        return torch.zeros(())
    device = norms[0].device
    sq = [n.to(device=device, dtype=torch.promote_types(n.dtype, torch.float32)) for n in norms]
    return torch.stack([n.square().sum() for n in sq]).sum().sqrt()


@torch.no_grad()
def agc_(
    parameters: Tensor | Iterable[Tensor],
    clipping: float = 0.01,
    eps: float = 1e-3,
    *,
    grad_norms: list[Tensor] | None = None,
    finite: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Unit-wise adaptive gradient clipping (Brock et al. 2021, "High-Performance Large-Scale
    Image Recognition Without Normalization", eq. 3), in place.

    For each unit i of each weight W with gradient G::

        G_i <- G_i * min(1, clipping * max(||W_i||, eps) / ||G_i||)

    Returns ``(pre-clip total 2-norm, clipped)``, where ``clipped`` is a bool tensor telling
    whether any unit was scaled down. ``grad_norms`` (from :func:`unitwise_norms`) saves the
    norm pass when the caller already has them; the total norm is assembled from them, so AGC
    reads every gradient only twice. ``finite=False`` zeroes the coefficients (a skipped step).
    """
    params, grads = grads_of(parameters)
    if grad_norms is None:
        grad_norms = unitwise_norms(grads)
    total = norm_from_unitwise(grad_norms)
    if not params:
        return total, torch.zeros((), dtype=torch.bool)
    mins = []
    for p, g, g_norm in zip(params, grads, grad_norms, strict=True):
        max_norm = unitwise_norm(p).clamp_(min=eps).mul_(clipping)
        coef = (max_norm / g_norm.clamp(min=NORM_EPS)).clamp_(max=1.0)
        mins.append(coef.min().to(total.device))
        if finite is not None:
            coef = coef * finite.to(coef.device)
        g.mul_(coef)
    clipped = torch.stack(mins).min() < 1.0
    return total, clipped
