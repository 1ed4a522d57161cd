"""What the races measured: :class:`ResponseCurve`.

A frozen, serialisable dataclass of plain numbers (strict JSON through ``to_json``), made by
:func:`autoclip.response.measure_response` and read by the proposal rules and the reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autoclip import serialize
from autoclip.errors import ConfigError

__all__ = ["ResponseCurve"]


@dataclass(frozen=True)
class ResponseCurve(serialize.Serializable):
    """What the races measured. Plain numbers, so it serialises (strict JSON via ``to_json``).

    >>> r = ResponseCurve(thresholds=(0.1, 1.0), scores=(0.5, float("inf")),
    ...                   losses=((1.0,), (9.0,)), diverged=(False, True), spikes=((), ()),
    ...                   clipped=(1.0, 0.5), chosen=0.1, chosen_index=0, chosen_norms=(2.0,),
    ...                   anchor=1.0, race_steps=1, steps_spent=2)
    >>> r.chosen, ResponseCurve.from_json(r.to_json()).scores
    (0.1, (0.5, inf))

    Attributes:
        thresholds: the candidate ``max_norm`` values raced, ascending.
        scores: each race's score (mean loss of its last quarter plus spike penalties; inf
            where it diverged). Lower is better.
        losses: each race's training loss per step (shorter where it stopped early).
        diverged: whether each race diverged; ``spikes``: the steps where its loss spiked.
        clipped: the fraction of each race's steps that were clipped.
        chosen: the threshold picked; ``chosen_index`` its index in ``thresholds``.
        chosen_norms: the pre-clip gradient norms of the chosen race (finite ones), from
            which adaptive clippers get their level and their warm start.
        anchor: the typical warm-up norm the ladder is centred on.
        race_steps: steps per race; ``steps_spent``: optimizer steps of all races together.
        notes: what diverged, what spiked, and where the choice sits on the ladder.
    """

    thresholds: tuple[float, ...]
    scores: tuple[float, ...]
    losses: tuple[tuple[float, ...], ...]
    diverged: tuple[bool, ...]
    spikes: tuple[tuple[int, ...], ...]
    clipped: tuple[float, ...]
    chosen: float
    chosen_index: int
    chosen_norms: tuple[float, ...]
    anchor: float
    race_steps: int
    steps_spent: int
    notes: tuple[str, ...] = ()

    _INT_FIELDS = ("chosen_index", "race_steps", "steps_spent")

    def __post_init__(self) -> None:
        n = len(self.thresholds)
        for name in ("scores", "losses", "diverged", "spikes", "clipped"):
            if len(getattr(self, name)) != n:
                raise ConfigError(
                    f"ResponseCurve needs one {name} entry per threshold ({n}), but got "
                    f"{len(getattr(self, name))}"
                )
        if not (0 <= self.chosen_index < n):
            raise ConfigError(f"chosen_index must lie in [0, {n}), but got {self.chosen_index}")

    def describe(self) -> str:
        """One sentence of what was measured, e.g. for a proposal's reason."""
        i = self.chosen_index
        c = self.thresholds[i]
        finite = [k for k, s in enumerate(self.scores) if math.isfinite(s)]
        if not finite:
            return (
                f"every one of {len(self.thresholds)} races diverged, down to max_norm "
                f"{_fmt(self.thresholds[0])}: lower the learning rate"
            )
        best = min(finite, key=lambda k: self.scores[k])
        parts = [
            f"over {len(self.thresholds)} races of {self.race_steps} steps from the same start, "
            f"the loss fell {'lowest' if best == i else 'about as low (a tie, within 5%)'} at "
            f"max_norm "
            f"{_fmt(c)} (last-quarter loss {self.scores[i]:.3g}"
            + (
                ")"
                if best == i
                else f"; best {self.scores[best]:.3g} at {_fmt(self.thresholds[best])})"
            )
        ]
        worse = [k for k in range(i + 1, len(self.thresholds))]
        bad = [k for k in worse if self.diverged[k]]
        spiky = [k for k in worse if self.spikes[k] and not self.diverged[k]]
        if bad:
            k = bad[0]
            parts.append(f"at {_fmt(self.thresholds[k])} it diverged by step {len(self.losses[k])}")
        elif spiky:
            k = spiky[0]
            parts.append(f"at {_fmt(self.thresholds[k])} it spiked at step {self.spikes[k][0]}")
        return "; ".join(parts)


def _fmt(v: float) -> str:
    return f"{v:.2g}"
