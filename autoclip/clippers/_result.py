"""What one clipping step returns: :class:`ClipResult`, a frozen dataclass of tensors."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class ClipResult:
    """What one clipping step did. All fields are tensors on the gradients' device.

    Attributes:
        total_norm: global gradient norm before clipping (0-dim).
        threshold: the norm (or, for ``value``/``agc``, the value or ratio) applied (0-dim).
        clipped: whether the gradients were scaled or clamped this step (0-dim bool).
        finite: whether the gradients were finite (0-dim bool); ``False`` means skipped.
        skipped: whether this step's update is skipped (0-dim bool): non-finite gradients
            under ``nonfinite="skip"``, a spike under ``spike="skip"``, or a step the
            GradScaler skips.

    >>> import torch
    >>> from autoclip import NormClip
    >>> p = torch.nn.Parameter(torch.zeros(1))
    >>> p.grad = torch.tensor([2.0])
    >>> res = NormClip(max_norm=1.0)([p])
    >>> float(res.total_norm), float(res.threshold), bool(res.clipped), bool(res.finite)
    (2.0, 1.0, True, True)
    """

    total_norm: Tensor
    threshold: Tensor
    clipped: Tensor
    finite: Tensor
    skipped: Tensor | None = None
