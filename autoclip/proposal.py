"""The proposal: a recommended clipper, a candidate per strategy, search ranges, the evidence.

Frozen, serialisable dataclasses (strict JSON through ``to_json``), made by
:mod:`autoclip.propose` and read by the search (``recommended`` is its first trial,
``space`` its ranges), the reports and the framework callbacks.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from autoclip.clippers import BaseClipper, create_clipper, list_clippers
from autoclip.errors import ConfigError
from autoclip.probe import _decode_floats, _encode, _tuples
from autoclip.response import ResponseCurve
from autoclip.stats import GradStats

__all__ = ["STRATEGIES", "Candidate", "Proposal", "SearchSpace"]

STRATEGIES = ("norm", "value", "quantile", "zscore", "agc")


@dataclass(frozen=True)
class Candidate:
    """One clipper setting: ``create_clipper(strategy, **params)``, and why."""

    strategy: str
    params: dict[str, Any]
    reason: str

    def __post_init__(self) -> None:
        names = [c.name for c in list_clippers()]
        if self.strategy not in names:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of {names}")

    @property
    def config(self) -> dict[str, Any]:
        """``{"name": strategy, **params}``, the form ``clipper.config`` takes."""
        return {"name": self.strategy, **self.params}

    def clipper(self) -> BaseClipper:
        """A fresh (not warm-started) clipper."""
        return create_clipper(self.strategy, **self.params)

    def describe(self) -> str:
        args = ", ".join(f"{k}={_fmt(v)}" for k, v in self.params.items())
        return f"{self.strategy}({args})"


@dataclass(frozen=True)
class SearchSpace:
    """Ranges for the Optuna search; ``norm``, ``value`` and ``agc`` are sampled log-uniformly.

    ``norm``: ``max_norm``; ``value``: ``clip_value``; ``quantile``: the quantile;
    ``z_thresh``: ZClip's threshold; ``agc``: AGC's ``clipping`` ratio; ``strategies``: the
    strategies to search, the recommended one first.
    """

    norm: tuple[float, float]
    value: tuple[float, float]
    quantile: tuple[float, float]
    z_thresh: tuple[float, float]
    agc: tuple[float, float]
    strategies: tuple[str, ...] = STRATEGIES

    def __post_init__(self) -> None:
        for name in ("norm", "value", "quantile", "z_thresh", "agc"):
            low, high = getattr(self, name)
            if not (0 < low <= high and math.isfinite(high)):
                raise ConfigError(
                    f"SearchSpace.{name}: `0 < low <= high` must hold, but got "
                    f"low={low!r}, high={high!r}"
                )
        if not (0 < self.quantile[1] < 1):
            raise ConfigError(f"SearchSpace.quantile must lie in (0, 1), but got {self.quantile}")

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Proposal:
    """The recommended clipper, a candidate for every strategy, and the search ranges."""

    recommended: Candidate
    reason: str
    candidates: tuple[Candidate, ...]
    space: SearchSpace
    warm_norms: tuple[float, ...] = ()
    stats: GradStats | None = field(default=None, compare=False)
    response: ResponseCurve | None = field(default=None, compare=False)
    steps_spent: int = 0  # optimizer steps of the warm-up and the measurement together

    def candidate(self, strategy: str) -> Candidate:
        """The candidate for ``strategy`` (a registry name)."""
        for c in self.candidates:
            if c.strategy == strategy:
                return c
        raise ConfigError(
            f"no candidate for strategy {strategy!r}; this proposal has "
            f"{[c.strategy for c in self.candidates]}"
        )

    def clipper(self, candidate: Candidate | str | None = None) -> BaseClipper:
        """A ready clipper: the recommended one by default, or a candidate / strategy name.

        Adaptive clippers (quantile, zscore) come warm-started from ``warm_norms``, so they
        clip from the first training step instead of learning from scratch.
        """
        if candidate is None:
            candidate = self.recommended
        elif isinstance(candidate, str):
            candidate = self.candidate(candidate)
        elif not isinstance(candidate, Candidate):
            raise ConfigError(
                f"candidate must be a Candidate, a strategy name or None, but got {candidate!r}"
            )
        clip = candidate.clipper()
        if clip.adaptive and self.warm_norms:
            clip.warm_start(list(self.warm_norms))
        return clip

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "recommended": asdict(self.recommended),
            "reason": self.reason,
            "candidates": [asdict(c) for c in self.candidates],
            "space": self.space.as_dict(),
            "warm_norms": list(self.warm_norms),
            "stats": None if self.stats is None else self.stats.to_dict(),
            "response": None if self.response is None else self.response.to_dict(),
            "steps_spent": self.steps_spent,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Proposal:
        known = {"recommended", "reason", "candidates", "space", "warm_norms", "stats"}
        unknown = set(d) - known - {"response", "steps_spent"}
        if unknown:
            raise ConfigError(f"Proposal.from_dict got unknown fields {sorted(unknown)}")
        space = dict(d["space"])
        return cls(
            recommended=_candidate(d["recommended"]),
            reason=d["reason"],
            candidates=tuple(_candidate(c) for c in d["candidates"]),
            space=SearchSpace(
                **{
                    k: _tuples(v) if k == "strategies" else _decode_floats(v)
                    for k, v in space.items()
                }
            ),
            warm_norms=_decode_floats(d.get("warm_norms", ())),
            stats=None if d.get("stats") is None else GradStats.from_dict(d["stats"]),
            response=(
                None if d.get("response") is None else ResponseCurve.from_dict(d["response"])
            ),
            steps_spent=int(d.get("steps_spent", 0)),
        )

    def to_json(self, **kw: Any) -> str:
        return json.dumps(_encode(self.to_dict()), allow_nan=False, **kw)

    @classmethod
    def from_json(cls, text: str) -> Proposal:
        return cls.from_dict(json.loads(text))

    # -- report ---------------------------------------------------------------------------------
    def summary(self) -> str:
        """A short human report: the recommendation, the candidates, the search ranges."""
        lines = [f"Recommended: {self.recommended.describe()}", f"  {self.reason}"]
        lines.append("Candidates:")
        for c in self.candidates:
            lines.append(f"  {c.describe():<44} {c.reason}")
        s = self.space
        lines.append(
            "Search ranges: "
            f"max_norm {_fmt(s.norm[0])}-{_fmt(s.norm[1])}, "
            f"clip_value {_fmt(s.value[0])}-{_fmt(s.value[1])}, "
            f"quantile {_fmt(s.quantile[0])}-{_fmt(s.quantile[1])}, "
            f"z_thresh {_fmt(s.z_thresh[0])}-{_fmt(s.z_thresh[1])}, "
            f"agc {_fmt(s.agc[0])}-{_fmt(s.agc[1])}"
        )
        if self.response is not None:
            r = self.response
            lines.append(
                "Measured: "
                + ", ".join(
                    f"{_fmt(c)}{'*' if i == r.chosen_index else ''} -> "
                    + ("diverged" if r.diverged[i] else f"{r.scores[i]:.3g}")
                    for i, c in enumerate(r.thresholds)
                )
                + " (max_norm -> last-quarter loss of its race; * chosen)"
            )
        if self.stats is not None and math.isfinite(self.stats.mean):
            st = self.stats
            lines.append(
                f"Rule of thumb for comparison: 5-10x the mean norm = "
                f"{_fmt(5 * st.mean)}-{_fmt(10 * st.mean)}"
            )
        if self.steps_spent:
            lines.append(f"Steps spent: {self.steps_spent} optimizer steps")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _candidate(d: dict[str, Any]) -> Candidate:
    return Candidate(strategy=d["strategy"], params=dict(d["params"]), reason=d["reason"])


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
