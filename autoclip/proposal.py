"""The proposal: a recommended clipper, a candidate per strategy, search ranges, the evidence.

Frozen, serialisable dataclasses (strict JSON through ``to_json``, :mod:`autoclip.serialize`),
made by :mod:`autoclip.propose` and read by the search (``recommended`` is its first trial,
``space`` its ranges), the reports and the framework callbacks. Which strategies a space
covers, and how each is searched, is the clipper registry's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from autoclip import serialize
from autoclip._format import format_config, format_value
from autoclip.clippers import BaseClipper, clipper_info, create_clipper, list_clippers
from autoclip.clippers._rules import BUILTIN
from autoclip.errors import ConfigError
from autoclip.response import ResponseCurve
from autoclip.stats import GradStats

__all__ = ["STRATEGIES", "Candidate", "Proposal", "SearchSpace"]

# The built-ins, in the order proposals list them; registered clippers follow (searchable()).
STRATEGIES = tuple(BUILTIN)


@dataclass(frozen=True)
class Candidate:
    """One clipper setting: ``create_clipper(strategy, **params)``, and why.

    >>> c = Candidate("norm", {"max_norm": 1.0}, "the measured threshold")
    >>> c.config, c.describe()
    ({'name': 'norm', 'max_norm': 1.0}, 'norm(max_norm=1)')
    >>> c.clipper()
    NormClip(max_norm=1.0, norm_type=2.0, nonfinite='skip')
    """

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
        return format_config(self.config)


@dataclass(frozen=True)
class SearchSpace:
    """The Optuna search's range of each strategy's searched parameter.

    ``ranges`` maps a registry name to the ``(low, high)`` of its ``param`` (sampled on the
    registry's scale: ``max_norm``, ``clip_value`` and AGC's ``clipping`` log-uniformly);
    ``strategies``: the strategies to search, the recommended one first (default: all).
    ``space.norm``, ``space.value``, ``space.quantile``, ``space.z_thresh`` and ``space.agc``
    read the built-ins' ranges.

    >>> s = SearchSpace({"norm": (0.1, 10.0), "quantile": (0.1, 0.99)})
    >>> s.range("norm"), s.strategies
    ((0.1, 10.0), ('norm', 'quantile'))
    >>> SearchSpace({"quantile": (0.1, 1.5)})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    autoclip.errors.ConfigError: SearchSpace['quantile']: quantile must lie inside (0.0, 1.0), ...
    """

    ranges: dict[str, tuple[float, float]]
    strategies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.ranges, dict):
            raise ConfigError(f"SearchSpace.ranges must be a dict, but got {self.ranges!r}")
        for name, (low, high) in self.ranges.items():
            info = clipper_info(name)
            if not (low <= high and math.isfinite(low) and math.isfinite(high)):
                raise ConfigError(
                    f"SearchSpace[{name!r}]: `low <= high` (both finite) must hold, but got "
                    f"low={low!r}, high={high!r}"
                )
            lo_b, hi_b = info.bounds
            if not (lo_b < low and high < hi_b):
                raise ConfigError(
                    f"SearchSpace[{name!r}]: {info.param} must lie inside {info.bounds}, but got "
                    f"{(low, high)}"
                )
        if not self.strategies:
            object.__setattr__(self, "strategies", tuple(self.ranges))
        missing = [s for s in self.strategies if s not in self.ranges]
        if missing:
            raise ConfigError(f"SearchSpace.strategies {missing} have no range in {self.ranges}")

    def range(self, strategy: str) -> tuple[float, float]:
        """The ``(low, high)`` of ``strategy``'s searched parameter."""
        if strategy not in self.ranges:
            raise ConfigError(
                f"this search space has no range for {strategy!r}; it covers "
                f"{sorted(self.ranges)} (register a clipper with param=... before proposing)"
            )
        return self.ranges[strategy]

    def describe(self) -> str:
        """``param low-high`` for each strategy, in the search's order."""
        return ", ".join(
            f"{clipper_info(n).param} {format_value(lo)}-{format_value(hi)}"
            for n, (lo, hi) in ((n, self.ranges[n]) for n in self.strategies)
        )

    norm = property(lambda self: self.range("norm"))
    value = property(lambda self: self.range("value"))
    quantile = property(lambda self: self.range("quantile"))
    z_thresh = property(lambda self: self.range("zscore"))
    agc = property(lambda self: self.range("agc"))


@dataclass(frozen=True)
class Proposal(serialize.Serializable):
    """The recommended clipper, a candidate for every strategy, and the search ranges.

    >>> from autoclip.probe import GradTrace
    >>> from autoclip.propose import propose
    >>> p = propose(GradTrace(norms=(1.0, 2.0, 1.5), losses=(1.0, 0.9, 0.8),
    ...                       layer_names=("w",), layer_norms=((1.0,), (2.0,), (1.5,))))
    >>> type(p.clipper()).__name__, p.candidate("quantile").strategy
    ('NormClip', 'quantile')
    >>> Proposal.from_json(p.to_json()) == p
    True
    """

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

    # -- report ---------------------------------------------------------------------------------
    def summary(self) -> str:
        """A short human report: the recommendation, the candidates, the search ranges."""
        lines = [f"Recommended: {self.recommended.describe()}", f"  {self.reason}"]
        lines.append("Candidates:")
        for c in self.candidates:
            lines.append(f"  {c.describe():<44} {c.reason}")
        lines.append("Search ranges: " + self.space.describe())
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


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
