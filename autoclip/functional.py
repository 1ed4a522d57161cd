"""Stateless, in-place operations on gradients.

Each clipping function returns the *pre-clip* total gradient norm: it is the statistic this
project lives on. Nothing here calls ``.item()`` or branches on a tensor's value, so none of it
synchronises an accelerator with the host (the one exception, documented on
:func:`zero_nonfinite_`, only branches when the gradients live in host memory, where a
"sync" costs nothing).

>>> import torch
>>> from autoclip import functional as F
>>> p = torch.nn.Parameter(torch.zeros(2))
>>> p.grad = torch.tensor([3.0, 4.0])
>>> float(F.clip_grad_norm_([p], max_norm=1.0))  # the pre-clip norm
5.0
>>> [round(v, 4) for v in p.grad.tolist()]
[0.6, 0.8]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor

try:  # DTensor (FSDP2, tensor parallel) exists wherever torch.distributed does
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # pragma: no cover - torch built without distributed
    _DTensor = None

__all__ = [
    "agc_",
    "norm_from_unitwise",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clamp_",
    "grads_of",
    "norm_clip_coef",
    "scale_",
    "total_norm",
    "unitwise_norm",
    "unitwise_norms",
    "zero_nonfinite_",
]

# Mean elements per tensor above which the host clamps tensor by tensor (one pass each)
# instead of with the foreach pair (two passes): measured 2x faster at 360k, slower at 5k.
_LARGE = 1 << 15
# torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6); using the same constant keeps
# NormClip bit-for-bit identical to it.
NORM_EPS = 1e-6


def _as_list(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        return [parameters]
    return list(parameters)


def grads_of(parameters: Tensor | Iterable[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Split ``parameters`` into (parameters that have a gradient, their gradients)."""
    params, grads = [], []
    for p in _as_list(parameters):
        g = p.grad  # one read: .grad is a property, and this runs every step
        if g is not None:
            params.append(p)
            grads.append(g)
    return params, grads


# Gradients in these dtypes are measured in float32: a float16 norm overflows to inf above
# 65504, which a GradScaler-scaled (or merely large) gradient reaches easily.
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _is_dtensor(t: Tensor) -> bool:
    return _DTensor is not None and isinstance(t, _DTensor)


def total_norm(grads: list[Tensor], norm_type: float = 2.0, foreach: bool | None = None) -> Tensor:
    """Global ``norm_type`` norm of ``grads``: one fp32-accumulating, DTensor-aware helper.

    * float32/float64 gradients: exactly ``torch.nn.utils.get_total_norm`` (bit-identical).
    * float16/bfloat16 gradients: each tensor's norm is accumulated in float32 (the result is
      float32), so large or loss-scaled half-precision gradients do not overflow to inf.
    * DTensor gradients (FSDP2 ``fully_shard``, tensor parallel): the norm of the local shards
      is reduced over the mesh (torchtitan's recipe: ``.full_tensor()`` of the norm, never of
      the gradients), so every rank gets the same global norm as a plain tensor.

    An empty list gives ``tensor(0.)``.
    """
    if all(type(g) is Tensor for g in grads):  # the common case, decided in one pass
        plain, sharded = grads, []
    else:
        plain = [g for g in grads if not _is_dtensor(g)]
        sharded = [g for g in grads if _is_dtensor(g)]
    parts = []
    if plain or not sharded:
        if not any(g.dtype in LOW_PRECISION for g in plain):
            parts.append(torch.nn.utils.get_total_norm(plain, norm_type=norm_type, foreach=foreach))
        else:
            parts.append(_fp32_norm(plain, norm_type, foreach))
    if sharded:
        parts.append(_dtensor_norm(sharded, norm_type).to(parts[0].device if parts else None))
    if len(parts) == 1:
        return parts[0]
    return torch.linalg.vector_norm(torch.stack(parts), norm_type)


def _norms_of(group: list[Tensor], norm_type: float, foreach: bool | None) -> list[Tensor]:
    dtype = torch.float32 if group[0].dtype in LOW_PRECISION else None
    if _foreach_ok(group[0].device, foreach):
        return list(torch._foreach_norm(group, norm_type, dtype=dtype))
    return [torch.linalg.vector_norm(g, norm_type, dtype=dtype) for g in group]


def _fp32_norm(grads: list[Tensor], norm_type: float, foreach: bool | None) -> Tensor:
    first = grads[0].device
    norms = []
    for (_, _), group in _by_device_and_dtype(grads).items():
        norms.extend(n.to(first) for n in _norms_of(group, norm_type, foreach))
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def _dtensor_norm(grads: list[Tensor], norm_type: float) -> Tensor:
    """Norm of DTensor gradients, one reduction per (mesh, placements, dtype) group."""
    groups: dict[tuple, list[Tensor]] = defaultdict(list)
    for g in grads:
        groups[(id(g.device_mesh), g.placements, g.dtype)].append(g)
    norms = []
    for group in groups.values():
        n = torch.linalg.vector_norm(torch.stack(_norms_of(group, norm_type, None)), norm_type)
        norms.append(n.full_tensor() if _is_dtensor(n) else n)
    first = norms[0].device
    if len(norms) == 1:
        return norms[0]
    return torch.linalg.vector_norm(torch.stack([n.to(first) for n in norms]), norm_type)


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
    if foreach is not False and coef.is_cpu and all(type(g) is Tensor and g.is_cpu for g in grads):
        # On the host foreach ops take mixed dtypes: one call, no grouping pass.
        torch._foreach_mul_(grads, coef)
        return
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


def zero_nonfinite_(grads: list[Tensor], finite: Tensor, host_branch: bool = True) -> None:
    """Replace NaN/inf gradient elements by 0 where ``finite`` is False.

    Call after the gradients were multiplied by a coefficient that is 0 for a non-finite step:
    the finite elements are then already 0 and this clears the NaN/inf ones, so the update is
    skipped rather than poisoning the weights. On the host the check is a free branch; on an
    accelerator the pass runs unconditionally (it is a no-op on finite gradients) so that the
    step still never waits for the device.
    """
    if not grads:
        return
    if host_branch and finite.device.type == "cpu":
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
    clamp_(grads, float(clip_value), foreach)
    return total


def clamp_(grads: list[Tensor], clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every element of ``grads`` to ``[-clip_value, clip_value]`` in place."""
    v = float(clip_value)
    for (device, _), group in _by_device_and_dtype(grads).items():
        # The foreach pair is two passes over memory; one clamp_ per tensor is one. On the
        # host, foreach ops are loops anyway: the single pass wins once tensors are large.
        large = device.type == "cpu" and sum(g.numel() for g in group) >= _LARGE * len(group)
        if _foreach_ok(device, foreach) and not large:
            torch._foreach_clamp_min_(group, -v)
            torch._foreach_clamp_max_(group, v)
        else:
            for g in group:
                g.clamp_(-v, v)


def unitwise_norm(x: Tensor) -> Tensor:
    """Norm per output unit (Brock et al. 2021): over all dims but the first; whole tensor if 0/1-D.

    Shape: ``[out, 1, 1, ...]`` for an ``[out, ...]`` weight; ``[]`` for a bias or scalar.
    """
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


def unitwise_norms(tensors: list[Tensor]) -> list[Tensor]:
    """:func:`unitwise_norm` of every tensor in ``tensors``."""
    return [unitwise_norm(t) for t in tensors]


def norm_from_unitwise(norms: list[Tensor]) -> Tensor:
    """Global 2-norm assembled from unit norms, without touching the gradients again."""
    return total_norm(norms, 2.0)


def _unit_dims(t: Tensor) -> int | tuple[int, ...]:
    return 1 if t.ndim == 2 else tuple(range(1, t.ndim))


class _Units(NamedTuple):
    """Every unit's 2-norm in one vector, and where each tensor's units sit in it.

    ``norms`` holds the units of each >= 2-D tensor listed in ``multi`` (in that order), then
    one norm per 0/1-D tensor listed in ``whole``. One vector lets AGC compute every
    coefficient with a handful of ops, instead of a handful per tensor.
    """

    norms: Tensor  # [units], on the first tensor's device
    multi: list[int]
    whole: list[int]
    one_device: bool


def _units(tensors: list[Tensor]) -> _Units:
    device = tensors[0].device
    one_device = all(t.device == device for t in tensors)
    multi = [i for i, t in enumerate(tensors) if t.ndim > 1]
    whole = [i for i, t in enumerate(tensors) if t.ndim <= 1]
    parts = [torch.linalg.vector_norm(tensors[i], dim=_unit_dims(tensors[i])) for i in multi]
    if whole:
        group = [tensors[i] for i in whole]
        if one_device and _foreach_ok(device, None):
            parts.append(torch.stack(torch._foreach_norm(group)))  # one call for all biases
        else:
            parts.append(torch.stack([torch.linalg.vector_norm(t).to(device) for t in group]))
    if not one_device:
        parts = [p.to(device) for p in parts]
    return _Units(torch.cat(parts), multi, whole, one_device)


@torch.no_grad()
def agc_(
    parameters: Tensor | Iterable[Tensor],
    clipping: float = 0.01,
    eps: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Unit-wise adaptive gradient clipping (Brock et al. 2021, "High-Performance Large-Scale
    Image Recognition Without Normalization", eq. 3), in place.

    For each unit i of each weight W with gradient G::

        G_i <- G_i * min(1, clipping * max(||W_i||, eps) / ||G_i||)

    Returns ``(pre-clip total 2-norm, clipped)``, where ``clipped`` is a bool tensor telling
    whether any unit was scaled down. The total norm is assembled from the unit norms, so AGC
    reads every gradient only twice (norms, then the scaling).
    """
    params, grads = grads_of(parameters)
    if not params:
        return torch.zeros(()), torch.zeros((), dtype=torch.bool)
    units = _units(grads)
    return torch.linalg.vector_norm(units.norms), _agc_scale_(params, grads, units, clipping, eps)


def _agc_scale_(
    params: list[Tensor],
    grads: list[Tensor],
    units: _Units,
    clipping: float,
    eps: float,
    finite: Tensor | None = None,
) -> Tensor:
    """The scaling half of :func:`agc_`, given the gradients' :func:`_units`; returns whether
    any unit was scaled down. ``finite=False`` zeroes every coefficient (a skipped step)."""
    g_units, multi, whole, one_device = units
    allowed = _units(params).norms.clamp_(min=eps).mul_(clipping).to(g_units.device)
    coef = (allowed / g_units.clamp(min=NORM_EPS)).clamp_(max=1.0)  # [units]
    clipped = coef.min() < 1.0
    if finite is not None:
        coef = coef * finite.to(coef.device)
    sizes = [grads[i].shape[0] for i in multi] + ([len(whole)] if whole else [])
    pieces = list(coef.unsqueeze(1).split(sizes))  # [out, 1]: broadcasts over a 2-D weight
    targets = [grads[i] for i in multi]
    for k, g in enumerate(targets):
        if g.ndim > 2:  # [out, 1, 1, ...] for a conv weight
            pieces[k] = pieces[k].view(-1, *([1] * (g.ndim - 1)))
    if whole:
        targets += [grads[i] for i in whole]
        pieces[-1:] = pieces[-1].view(-1).unbind()  # one 0-dim coefficient per bias
    if not one_device:
        pieces = [c.to(g.device) for c, g in zip(pieces, targets, strict=True)]
    torch._foreach_mul_(targets, pieces)
    return clipped
