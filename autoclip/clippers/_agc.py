"""Unit-wise adaptive gradient clipping (AGC; Brock et al. 2021, "High-Performance Large-Scale
Image Recognition Without Normalization").

Each output unit's gradient is clipped relative to that unit's weight norm::

    G_i <- G_i * min(1, clipping * max(||W_i||, eps) / ||G_i||)

The paper does not clip the final linear layer; to follow it, pass only the other parameters
(``AGC(...)(body_params)``) instead of using ``attach``. The reported threshold is
``clipping`` (a ratio, not a norm).
"""

from __future__ import annotations

import torch

from autoclip import functional as F
from autoclip.clippers._base import BaseClipper
from autoclip.clippers._checks import check_positive
from autoclip.clippers._registry import register_clipper


@register_clipper("agc", "clip each unit's gradient to a fraction of its weight norm (NFNets)")
class AGC(BaseClipper):
    """Unit-wise adaptive gradient clipping (AGC), as in NFNets.

    Brock, De, Smith, Simonyan 2021, "High-Performance Large-Scale Image Recognition Without
    Normalization" (arXiv:2102.06171), section 4.1: for each unit ``i`` (a row of a weight
    matrix, the output channel of a convolution)::

        G_i <- G_i * min(1, clipping * max(||W_i||, eps) / ||G_i||)

    ``clipping`` is a ratio, not a norm (0.01 is the paper's value for large batches);
    ``eps`` (1e-3) keeps zero-initialised units trainable. The paper leaves the final linear
    layer unclipped: pass the other parameters (``AGC(...)(body_params)``) to follow it.

    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # one unit, ||W|| = 5
    >>> w.grad = torch.tensor([[0.3, 0.4]])                 # ||G|| = 0.5 > 0.01 * 5
    >>> res = AGC(clipping=0.01)([w])
    >>> [round(v, 4) for v in w.grad.flatten().tolist()]    # scaled to ||G|| = 0.05
    [0.03, 0.04]
    """

    # Unit norms of sharded weights would need a reduction per unit: not implemented.
    supports_dtensor = False

    def __init__(self, clipping: float = 0.01, eps: float = 1e-3, nonfinite: str = "skip") -> None:
        # 0.01: the paper's value for large batches; smaller batches tolerate larger ratios.
        check_positive("clipping", clipping)
        check_positive("eps", eps)
        self.clipping = clipping
        self.eps = eps
        super().__init__(norm_type=2.0, nonfinite=nonfinite)

    def _initial_state(self):
        return {"clipping": torch.tensor(float(self.clipping))}

    def _total_norm(self, grads):
        # The unit norms give the global norm for free; keep them for _clip.
        if not grads:
            self._units = None
            return torch.zeros(())
        self._units = F._units(grads)
        return torch.linalg.vector_norm(self._units.norms)

    def _clip(self, params, grads, total, finite):
        units, self._units = self._units, None
        if units is None:
            none = torch.zeros((), dtype=torch.bool, device=total.device)
            return self._state["clipping"], none, finite
        skip = self.nonfinite == "skip"
        clipped = F._agc_scale_(
            params, grads, units, self.clipping, self.eps, finite if skip else None
        )
        return self._state["clipping"], clipped, finite
