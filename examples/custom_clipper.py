"""Register your own clipper: autoclip then proposes, searches and reports it like its own.

    python examples/custom_clipper.py

The clipper below clamps every gradient element to the ``q``-th quantile of that step's
``|g|`` (a per-step adaptive value clip). Registering it with ``param="q"`` tells autoclip
which parameter to search, on which scale and within which bounds; a ``candidate`` and a
``search_range`` rule (optional) derive its starting value and range from the measured
warm-up, as the built-ins do (see ``autoclip/clippers/_rules.py``).
"""

from __future__ import annotations

import torch
from torch import nn

import autoclip
from autoclip.clippers import BaseClipper, check_fraction, register_clipper

torch.set_num_threads(1)


@register_clipper(
    "absq",
    "clamp gradient elements to a quantile of this step's |g|",
    param="q",
    log=False,  # a fraction: search it uniformly
    bounds=(0.0, 1.0),
    # start where 1% of the elements are clamped; search from the median to the top 0.1%
    candidate=lambda stats, threshold: ({"q": 0.99}, "clamp the top 1% of elements"),
    search_range=lambda stats, params: (0.5, 0.999),
)
class AbsQuantileClip(BaseClipper):
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


def make_task() -> autoclip.Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]
    return autoclip.Task(
        model_fn=lambda: nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)),
        optimizer_fn=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        loss_fn=lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1]),
        batches=batches,
        steps=40,
        name="custom-clipper-demo",
    )


if __name__ == "__main__":
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    result = autoclip.tune(make_task(), n_trials=6, probe_steps=20, strategies=["absq"])
    print(autoclip.report.format_tune(result))
