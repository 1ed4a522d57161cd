"""Name-based creation of clippers: one registry with frozen metadata.

Each entry (:class:`ClipperInfo`) says everything the rest of autoclip needs to treat a
clipper generically: which parameter a search varies (``param``), on which scale (``log``),
within which hard bounds, how its starting value and search range follow from the measured
warm-up (``candidate`` and ``search_range``, the *range rule*), and how a configuration is
described in a table. ``propose``, ``tune``, the reports and the studies read it, so a
clipper registered by a user is proposed, searched and reported like the built-ins.

>>> sorted(info.name for info in list_clippers())
['agc', 'norm', 'quantile', 'value', 'zscore']
>>> info = clipper_info("norm")
>>> info.param, info.log
('max_norm', True)
>>> info.describe({"name": "norm", "max_norm": 0.123456})
'norm(max_norm=0.1235)'
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoclip.errors import ConfigError

__all__ = [
    "ClipperInfo",
    "clipper_info",
    "create_clipper",
    "list_clippers",
    "register_clipper",
    "searchable",
    "unregister_clipper",
]

#: ``(stats, threshold) -> (params, reason)``: a candidate's parameters from the warm-up
#: statistics (:class:`~autoclip.stats.GradStats`) and the measured global-norm threshold.
CandidateRule = Callable[[Any, float], tuple[dict[str, Any], str]]
#: ``(stats, params) -> (low, high)``: the search range of ``param`` around a candidate.
RangeRule = Callable[[Any, dict[str, Any]], tuple[float, float]]

# A clipper registered without a range rule is searched over this factor either side of its
# default on a log scale (the 5-10x rule of thumb's spread), or over its bounds when linear.
DEFAULT_SPREAD = 10.0


@dataclass(frozen=True)
class ClipperInfo:
    """Registry entry: a clipper class and what propose, search and report need to know of it.

    Attributes:
        name: the registry name (``create_clipper(name, ...)``, ``config["name"]``).
        cls: the :class:`~autoclip.clippers.BaseClipper` subclass.
        adaptive: whether its threshold adapts (it then has state to warm-start).
        description: one line for listings.
        param: the one constructor parameter a search varies (None: the clipper is never
            searched or proposed, only built by name).
        log: search ``param`` log-uniformly (thresholds, ratios) or uniformly (quantiles,
            z-scores).
        bounds: the open interval ``param`` must lie in; a search range is clamped into it.
        candidate: the range rule's first half, ``(stats, threshold) -> (params, reason)``
            (None: the class's default parameters).
        search_range: its second half, ``(stats, params) -> (low, high)`` (None: the default
            value times/divided by ``DEFAULT_SPREAD``, or ``bounds`` on a linear scale).
        unit: what ``param`` measures, for reports ("global norm", "ratio", ...).

    >>> info = clipper_info("quantile")
    >>> info.param, info.log, info.bounds, info.adaptive
    ('quantile', False, (0.0, 1.0), True)
    >>> info.range_for(None, {"quantile": 0.5})   # AutoClip's p10 to the top 1%
    (0.1, 0.99)
    """

    name: str
    cls: type
    adaptive: bool
    description: str
    param: str | None = None
    log: bool = True
    bounds: tuple[float, float] = (0.0, math.inf)
    candidate: CandidateRule | None = None
    search_range: RangeRule | None = None
    unit: str = ""

    @property
    def default_params(self) -> dict[str, Any]:
        """The constructor's defaults (parameters without one are left out)."""
        sig = inspect.signature(self.cls.__init__)
        return {
            n: p.default
            for n, p in sig.parameters.items()
            if n != "self" and p.default is not inspect.Parameter.empty
        }

    def propose(self, stats: Any, threshold: float) -> tuple[dict[str, Any], str]:
        """The candidate's parameters and the reason, from the rule or the defaults."""
        if self.candidate is not None:
            return self.candidate(stats, threshold)
        params = self.default_params
        if self.param is not None and self.param not in params:
            # a required searched parameter without a rule: start at the measured threshold
            params[self.param] = threshold
        return {k: v for k, v in params.items() if k == self.param}, f"{self.name}'s defaults"

    def range_for(self, stats: Any, params: dict[str, Any]) -> tuple[float, float]:
        """The search range of ``param`` for a candidate with ``params``, inside ``bounds``."""
        if self.param is None:
            raise ConfigError(f"clipper {self.name!r} has no searched parameter (param=None)")
        if self.search_range is not None:
            low, high = self.search_range(stats, params)
        elif self.log:
            v = float(params[self.param])
            low, high = v / DEFAULT_SPREAD, v * DEFAULT_SPREAD
        else:
            low, high = self.bounds
        lo_b, hi_b = self.bounds
        # an open bound is kept open: a range ends a hair inside it
        low = max(low, math.nextafter(lo_b, math.inf)) if low <= lo_b else low
        high = min(high, math.nextafter(hi_b, -math.inf)) if high >= hi_b else high
        return float(low), float(high)

    def describe(self, config: dict[str, Any] | None) -> str:
        """A short label of a configuration: ``name(param=value)``, or "no clipping"."""
        from autoclip._format import format_value

        if config is None:
            return "no clipping"
        if self.param is not None and self.param in config:
            return f"{self.name}({self.param}={format_value(config[self.param])})"
        return self.name


_REGISTRY: dict[str, ClipperInfo] = {}


def register_clipper(
    name: str,
    description: str,
    *,
    param: str | None = None,
    log: bool = True,
    bounds: tuple[float, float] = (0.0, math.inf),
    candidate: CandidateRule | None = None,
    search_range: RangeRule | None = None,
    unit: str = "",
):
    """Class decorator: register a :class:`BaseClipper` subclass under ``name``.

    ``param`` (and the optional range rule) make it searchable and proposable; see
    :class:`ClipperInfo` for each field. The built-ins' rules live in ``_rules.py``.

    >>> from autoclip.clippers import NormBasedClipper
    >>> @register_clipper("doc_half", "clip at half of max_norm", param="max_norm")
    ... class HalfNorm(NormBasedClipper):
    ...     def __init__(self, max_norm: float = 1.0):
    ...         self.max_norm = max_norm
    ...         super().__init__()
    ...     def _observe(self, total, finite):
    ...         return total.new_tensor(self.max_norm / 2)
    >>> create_clipper("doc_half", max_norm=4.0).config
    {'name': 'doc_half', 'max_norm': 4.0}
    >>> unregister_clipper("doc_half")
    """
    if not (isinstance(name, str) and name.isidentifier()):
        raise ConfigError(f"a clipper name must be an identifier, but got {name!r}")
    meta = _builtin_meta(name) if param is None and candidate is None else {}
    meta = meta or dict(
        param=param,
        log=bool(log),
        bounds=tuple(bounds),
        candidate=candidate,
        search_range=search_range,
        unit=unit,
    )

    def deco(cls):
        if name in _REGISTRY:
            raise ConfigError(
                f"a clipper named {name!r} is already registered; pick another name or "
                f"unregister_clipper({name!r}) first"
            )
        if meta["param"] is not None:
            params = inspect.signature(cls.__init__).parameters
            if meta["param"] not in params:
                raise ConfigError(
                    f"param={meta['param']!r} is not a parameter of {cls.__name__}; it "
                    f"accepts {[p for p in params if p != 'self']}"
                )
        cls.name = name
        _REGISTRY[name] = ClipperInfo(name, cls, bool(cls.adaptive), description, **meta)
        return cls

    return deco


def unregister_clipper(name: str) -> None:
    """Remove a clipper registered by :func:`register_clipper` (tests, notebooks)."""
    if name not in _REGISTRY:
        raise ConfigError(f"no clipper named {name!r} is registered")
    del _REGISTRY[name]


def _builtin_meta(name: str) -> dict[str, Any]:
    from autoclip.clippers._rules import BUILTIN

    return dict(BUILTIN.get(name, {}))


def list_clippers() -> list[ClipperInfo]:
    """Every registered clipper, in registration order.

    >>> "zscore" in [c.name for c in list_clippers()]
    True
    """
    return list(_REGISTRY.values())


def searchable() -> list[ClipperInfo]:
    """The clippers a proposal and a search cover: those with a searched ``param``, the
    built-ins first (norm, value, quantile, zscore, agc), then the others as registered.

    >>> [info.name for info in searchable()][:5]
    ['norm', 'value', 'quantile', 'zscore', 'agc']
    """
    from autoclip.clippers._rules import BUILTIN

    order = {name: i for i, name in enumerate(BUILTIN)}
    found = [info for info in _REGISTRY.values() if info.param is not None]
    return sorted(found, key=lambda info: order.get(info.name, len(order)))


def clipper_info(name: str) -> ClipperInfo:
    """The registry entry of ``name``; a :class:`ConfigError` naming the choices otherwise.

    >>> clipper_info("agc").unit
    'ratio'
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown clipper {name!r}; choose one of {sorted(_REGISTRY)}") from None


def create_clipper(name: str, **params: Any):
    """Build a clipper from its registry name and parameters (the inverse of ``.config``).

    >>> create_clipper("norm", max_norm=1.0)
    NormClip(max_norm=1.0, norm_type=2.0, nonfinite='skip')
    """
    info = clipper_info(name)
    try:
        return info.cls(**params)
    except TypeError as exc:
        raise ConfigError(
            f"bad parameters for clipper {name!r}: {exc}; it accepts {info.cls._param_names()}"
        ) from None
