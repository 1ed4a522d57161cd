"""The original AutoClip rule, re-implemented faithfully as a baseline for speed and quality.

Seetharaman et al. 2020 ("AutoClip: Adaptive Gradient Clipping for Source Separation
Networks"; reference code github.com/pseeth/autoclip, ``autoclip.py``) clip every step to the
``percentile``-th percentile of *all* gradient norms seen so far:

1. total norm: loop over the parameters, ``p.grad.data.norm(2).item()`` per tensor (one host
   sync per tensor), summed in Python as the square root of the sum of squares;
2. append it to a Python list holding the whole history;
3. ``np.percentile(history, percentile)`` over that whole list (O(t) per step);
4. ``torch.nn.utils.clip_grad_norm_(parameters, clip_value)``.

Kept as written, costs and all: it is what autoclip's QuantileClip is compared against.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

__all__ = ["AutoClipOriginal"]


class AutoClipOriginal:
    """The full-history percentile clipper of Seetharaman et al. 2020, as published.

    Args:
        percentile: in [0, 100]; the paper recommends 10 (clip to the 10th percentile).

    Attributes:
        history: every total norm observed so far (a list of Python floats); fill it to
            simulate a long run.
    """

    def __init__(self, percentile: float = 10.0) -> None:
        self.percentile = percentile
        self.history: list[float] = []

    def __call__(self, parameters: Iterable[torch.Tensor]) -> float:
        """Clip the gradients of ``parameters`` in place; return the pre-clip total norm."""
        params = [p for p in parameters if p.grad is not None]
        total = 0.0
        for p in params:
            total += p.grad.data.norm(2).item() ** 2
        total = total ** (1.0 / 2)
        self.history.append(total)
        clip_value = np.percentile(self.history, self.percentile)
        torch.nn.utils.clip_grad_norm_(params, clip_value)
        return total
