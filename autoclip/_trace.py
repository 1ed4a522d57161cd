"""The warm-up's record: :class:`GradTrace`, what :func:`autoclip.probe.probe` saw, step by step.

A frozen, serialisable dataclass of plain numbers (strict JSON through ``to_json``), made by
the probe and read by :mod:`autoclip.stats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autoclip import serialize
from autoclip.errors import ConfigError

__all__ = ["SAFETY_CLIP", "GradTrace"]

# 5x the running median: five times the threshold the proposal itself would pick, so it only
# touches blow-ups; at 20x, blow-ups that build up over a few steps (the median climbing with
# them) got through and wrecked the warm-ups of the digits_mlp and char_lstm studies.
SAFETY_CLIP = 5.0


@dataclass(frozen=True)
class GradTrace(serialize.Serializable):
    """What the warm-up saw, step by step. Plain numbers (host floats), so it serialises.

    >>> trace = GradTrace(norms=(1.0, float("inf"), 2.0), losses=(1.0, 0.9, 0.8),
    ...                   layer_names=("w",), layer_norms=((1.0,), (float("inf"),), (2.0,)))
    >>> trace.steps_run, trace.finite_norms
    (3, (1.0, 2.0))
    >>> GradTrace.from_json(trace.to_json()).norms  # strict JSON, exact round trip
    (1.0, inf, 2.0)

    Attributes:
        norms: global 2-norm of the raw gradient at each step (``inf``/``nan`` where the
            gradient was non-finite); never reduced by the safety net.
        losses: training loss at each step.
        layer_names: one name per parameter tensor that the optimizer updates.
        layer_norms: ``[step][layer]`` 2-norm of each tensor's raw gradient (0 for a tensor
            that had no gradient that step).
        layer_numels: number of elements per parameter tensor.
        weight_norms: 2-norm of each parameter tensor before the warm-up.
        value_sample: ``|g|`` of gradient elements drawn uniformly from all trainable
            elements (fixed positions), at the steps in ``sample_steps``, concatenated.
        sample_steps: the steps at which ``value_sample`` and ``agc_ratio_sample`` were taken.
        value_counts: how many of ``value_sample`` come from each of ``sample_steps``.
        agc_ratio_sample: unit-wise ``||G_i|| / ||W_i||`` of a fixed sample of units (rows of
            the weight matrices), at the same steps; NaN for a unit whose weight norm is
            below AGC's eps (1e-3), such as a zero-initialised layer.
        agc_ratio_counts: how many of ``agc_ratio_sample`` come from each sampled step.
        safety_clipped: whether the safety net scaled that step's update down.
        skipped: whether that step's update was skipped (non-finite gradient).
        planned_steps: the ``steps`` asked for.
        stopped_early: the warm-up ended before ``planned_steps``; ``reason`` says why.
        diverged: it ended because the model diverged (a NaN/inf loss, a loss 1000x its first
            value, or ten non-finite gradients in a row), not because the batches ran out.
        safety_clip: the safety multiple used (None: disabled).
        optimizer: the optimizer's class name; ``lr``: its first group's learning rate.
        amp: whether a ``GradScaler`` was used (norms are of the unscaled gradients).
    """

    norms: tuple[float, ...]
    losses: tuple[float, ...]
    layer_names: tuple[str, ...]
    layer_norms: tuple[tuple[float, ...], ...]
    layer_numels: tuple[int, ...] = ()
    weight_norms: tuple[float, ...] = ()
    value_sample: tuple[float, ...] = ()
    sample_steps: tuple[int, ...] = ()
    value_counts: tuple[int, ...] = ()
    agc_ratio_sample: tuple[float, ...] = ()
    agc_ratio_counts: tuple[int, ...] = ()
    safety_clipped: tuple[bool, ...] = ()
    skipped: tuple[bool, ...] = ()
    planned_steps: int = 0
    stopped_early: bool = False
    reason: str | None = None
    diverged: bool = False
    safety_clip: float | None = SAFETY_CLIP
    optimizer: str = ""
    lr: float | None = None
    amp: bool = False

    _TEXT_FIELDS = ("layer_names", "reason", "optimizer")

    def __post_init__(self) -> None:
        n = len(self.norms)
        if len(self.losses) != n or len(self.layer_norms) != n:
            raise ConfigError(
                "GradTrace needs one loss and one row of layer norms per step, but got "
                f"{n} norms, {len(self.losses)} losses, {len(self.layer_norms)} rows"
            )
        for row in self.layer_norms:
            if len(row) != len(self.layer_names):
                raise ConfigError(
                    f"each layer_norms row must have {len(self.layer_names)} entries (one per "
                    f"layer name), but one has {len(row)}"
                )

    @property
    def steps_run(self) -> int:
        """Steps actually recorded."""
        return len(self.norms)

    @property
    def finite_norms(self) -> tuple[float, ...]:
        """The finite entries of ``norms``, in order."""
        return tuple(x for x in self.norms if math.isfinite(x))
