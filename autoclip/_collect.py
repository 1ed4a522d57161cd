"""What the warm-up records at each step besides the loss: per-layer norms and samples.

:class:`_LayerNorms` takes the 2-norm of every parameter tensor's gradient with one
``torch._foreach_norm`` kernel per (device, dtype) group; :class:`_Sampler` draws fixed random
positions once and reads ``|g|`` elements and AGC unit ratios ``||G_i|| / ||W_i||`` there.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

# AGC's eps (Brock et al. 2021): a zero-initialised weight counts as this norm.
AGC_EPS = 1e-3


def _param_names(model: nn.Module, params: list[Tensor]) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    return [names.get(id(p), f"param{i}") for i, p in enumerate(params)]


class _Sampler:
    """Fixed random positions (elements for ``|g|``, units for AGC), drawn once."""

    def __init__(self, params: list[Tensor], size: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)  # its own stream: the caller's is untouched
        numels = [p.numel() for p in params]
        # AGC units: the rows of weight matrices (and filters). Biases and gains are left out
        # of the sample: as one "unit" each, often initialised at zero, their ratio says
        # little about the clipping ratio the weights need (only if there is no matrix at
        # all are they used).
        has_matrix = any(p.ndim > 1 for p in params)
        units = [p.shape[0] if p.ndim > 1 else (0 if has_matrix else 1) for p in params]
        self.elements = self._split(numels, size, gen, params)
        self.units = self._split(units, size, gen, params)

    @staticmethod
    def _split(counts, size, gen, params) -> list[Tensor | None]:
        total = sum(counts)
        if total == 0:
            return [None] * len(counts)
        if total <= size:
            flat = torch.arange(total)
        else:  # with replacement: O(size), and repeats are rare when total >> size
            flat = torch.randint(total, (size,), generator=gen).sort().values
        bounds = torch.tensor([0, *np.cumsum(counts).tolist()])
        out = []
        for i, p in enumerate(params):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            idx = flat[(flat >= lo) & (flat < hi)] - lo
            out.append(idx.to(p.device) if idx.numel() else None)
        return out

    @torch.no_grad()
    def take(self, params: list[Tensor], grads: list[Tensor | None]) -> tuple[Tensor, Tensor]:
        """``(|g| sample, unit ratio sample)`` as float32 tensors on the first device."""
        device = params[0].device
        values, ratios = [], []
        for p, g, e_idx, u_idx in zip(params, grads, self.elements, self.units, strict=True):
            if g is None:
                continue
            if e_idx is not None:
                values.append(g.reshape(-1).index_select(0, e_idx).abs().float().to(device))
            if u_idx is not None:
                if p.ndim > 1:
                    g_u = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1)
                    w_u = torch.linalg.vector_norm(p.reshape(p.shape[0], -1), dim=1)
                    g_u, w_u = g_u.index_select(0, u_idx), w_u.index_select(0, u_idx)
                else:
                    g_u = torch.linalg.vector_norm(g).reshape(1)
                    w_u = torch.linalg.vector_norm(p).reshape(1)
                # A unit whose weights are (still) below eps, e.g. a zero-initialised layer,
                # has no meaningful ratio: AGC bounds it by eps * clipping whatever it is.
                r = torch.where(w_u >= AGC_EPS, g_u / w_u.clamp(min=AGC_EPS), math.nan)
                ratios.append(r.float().to(device))
        empty = torch.zeros(0, device=device)
        return (torch.cat(values) if values else empty, torch.cat(ratios) if ratios else empty)


class _LayerNorms:
    """Per-tensor gradient norms with one ``_foreach_norm`` per (device, dtype) group."""

    def __init__(self, params: list[Tensor]) -> None:
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault((p.device, p.dtype), []).append(i)
        self.groups = list(groups.values())
        self.device = params[0].device
        order = [i for g in self.groups for i in g]
        # Stacking group by group gives the layers in `order`; this puts them back.
        self.inverse = None
        if order != list(range(len(params))):
            self.inverse = torch.argsort(torch.tensor(order)).to(self.device)
        self.n = len(params)

    def __call__(self, grads: list[Tensor | None]) -> Tensor:
        """``[n_layers]`` float32 norms (0 where a gradient is None)."""
        parts = []
        for idx in self.groups:
            gs = [grads[i] for i in idx]
            if all(g is not None for g in gs):
                norms = torch._foreach_norm(gs, 2, dtype=torch.float32)
                parts.append(torch.stack(norms).to(self.device))
            else:
                present = [g for g in gs if g is not None]
                norms = iter(torch._foreach_norm(present, 2, dtype=torch.float32))
                zero = torch.zeros((), device=self.device)
                parts.append(
                    torch.stack([zero if g is None else next(norms).to(self.device) for g in gs])
                )
        layer = parts[0] if len(parts) == 1 else torch.cat(parts)
        if self.inverse is not None:
            layer = layer.index_select(0, self.inverse)
        return layer


def _groups(tensors: list[Tensor]) -> dict[tuple, list[Tensor]]:
    out: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        out.setdefault((t.device, t.dtype), []).append(t)
    return out
