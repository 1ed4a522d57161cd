"""A clipper the registry has never seen, defined the way a user would (shared by the tests
and examples/custom_clipper.py is its documented twin)."""

from __future__ import annotations

import torch

from autoclip.clippers import BaseClipper, check_fraction, register_clipper, unregister_clipper

NAME = "absq_test"


class AbsQuantileClip(BaseClipper):
    """Clamp every gradient element to the ``q``-th quantile of this step's ``|g|``."""

    def __init__(self, q: float = 0.99, nonfinite: str = "skip") -> None:
        check_fraction("q", q)
        self.q = q
        super().__init__(nonfinite=nonfinite)

    def _clip(self, params, grads, total, finite):
        flat = torch.cat([g.detach().abs().flatten() for g in grads])
        flat = torch.where(torch.isfinite(flat), flat, 0.0)
        bound = torch.quantile(flat.float(), self.q).to(flat.dtype)
        for g in grads:
            g.clamp_(-bound, bound)
        return bound, (flat > bound).any()


def register() -> None:
    # q is searched on a linear scale inside (0, 1), starting from its default (no range rule)
    register_clipper(
        NAME, "clamp elements to a quantile of |g|", param="q", log=False, bounds=(0.0, 1.0)
    )(AbsQuantileClip)


def unregister() -> None:
    unregister_clipper(NAME)
