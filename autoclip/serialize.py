"""The one JSON encoding of every autoclip result: strict JSON, frozen dataclasses both ways.

Every file and every ``--json`` output autoclip writes (``proposal.json``, ``result.json``,
``probe --json``, ``tune --json``, the records stored in a study) goes through :func:`dumps`,
and every reader through :func:`loads` / :func:`from_plain`, so there is one encoding:

* a dataclass becomes an object of its fields, a tuple a list, a dict an object;
* a non-finite float becomes a string: ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (the
  spellings Python's ``float()`` and JavaScript's ``Number()`` parse). The output never holds
  a bare ``NaN``/``Infinity`` token, which strict parsers (``jq``, browsers, Go, Rust)
  reject. Strings rather than ``null`` because the round trip must be exact: an overflowed
  gradient norm (``inf``) is not an undefined one (``nan``), and ``null`` already means
  "absent" in an optional field such as ``lr``.

Reading is driven by the dataclass's type hints: ``float`` fields take the three strings
back, ``tuple[...]`` fields become tuples again, nested dataclasses are rebuilt, and a value
of the wrong shape is a one-line :class:`~autoclip.errors.ConfigError` naming the field.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Point:
...     x: float
...     tags: tuple[str, ...] = ()
>>> text = dumps(Point(float("inf"), ("a",)))
>>> text
'{"x": "Infinity", "tags": ["a"]}'
>>> loads(text, Point)
Point(x=inf, tags=('a',))
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, TypeVar

from autoclip.errors import ConfigError

__all__ = [
    "Serializable",
    "decode",
    "decode_float",
    "dumps",
    "encode",
    "from_plain",
    "loads",
    "to_plain",
]

T = TypeVar("T")

NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def decode_float(value: Any) -> Any:
    """``"NaN"``/``"Infinity"``/``"-Infinity"`` back to floats; anything else unchanged.

    >>> decode_float("-Infinity"), decode_float(2)
    (-inf, 2)
    """
    if isinstance(value, str) and value in NONFINITE:
        return NONFINITE[value]
    return value


def to_plain(value: Any) -> Any:
    """Dataclasses, tuples and dicts as plain dicts and lists (floats stay floats, NaN too).

    >>> to_plain({"a": (1, 2.5)})
    {'a': [1, 2.5]}
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def encode(value: Any) -> Any:
    """:func:`to_plain`, with non-finite floats as their strings: ready for strict JSON.

    >>> encode([1.0, float("nan")])
    [1.0, 'NaN']
    """
    value = to_plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encode(v) for v in value]
    return value


def dumps(value: Any, **kw: Any) -> str:
    """Strict JSON of ``value`` (a dataclass, dict, list or number); ``kw`` go to json.dumps.

    >>> dumps({"spike_factor": float("nan")})
    '{"spike_factor": "NaN"}'
    """
    return json.dumps(encode(value), allow_nan=False, **kw)


def loads(text: str, cls: type[T] | None = None) -> T | Any:
    """Parse ``text``; with ``cls`` (a dataclass) rebuild it through :func:`from_plain`.

    >>> loads('[1, "Infinity"]')
    [1, inf]
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        what = cls.__name__ if cls is not None else "value"
        raise ConfigError(f"cannot read the {what} as JSON: {exc}") from None
    if cls is None:
        return _decode_any(value)
    return from_plain(cls, value)


def from_plain(cls: type[T], data: Any, where: str | None = None) -> T:
    """Rebuild dataclass ``cls`` from :func:`to_plain` / :func:`encode` output.

    Unknown or missing fields and values of the wrong type are a :class:`ConfigError` that
    names the field, so a malformed state or result file fails with one clear line.

    >>> from autoclip.stats import Percentiles
    >>> from_plain(Percentiles, dict(p50=1, p75=2, p90=3, p95=4, p99=5, max="Infinity")).max
    inf
    """
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object (a dict), but got {_short(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(
            f"{where} got unknown fields {sorted(unknown)}; it accepts {sorted(fields)}"
        )
    missing = [
        n
        for n, f in fields.items()
        if n not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where} is missing the fields {missing}")
    values = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return _decode_any(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        return from_plain(hint, value, where)
    if origin is tuple or origin is list or hint in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, but got {_short(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"{where} must have {len(args)} entries, but has {len(value)}")
            kinds = list(args)
        else:
            kinds = [args[0] if args else Any] * len(value)
        pairs = enumerate(zip(kinds, value, strict=True))
        items = [_convert(k, v, f"{where}[{i}]") for i, (k, v) in pairs]
        return tuple(items) if (origin or hint) is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be an object (a dict), but got {_short(value)}")
        inner = args[1] if args else Any
        return {k: _convert(inner, v, f"{where}[{k!r}]") for k, v in value.items()}
    if hint is float:
        value = decode_float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, but got {_short(value)}")
        return float(value)
    if hint is int or hint is bool or hint is str:
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where} must be {hint.__name__}, but got {_short(value)}")
        return value
    return value


def decode(value: Any) -> Any:
    """The inverse of :func:`encode` for untyped data (lists and dicts stay lists and dicts).

    >>> decode({"loss": "NaN", "rungs": [[10, "Infinity"]]})
    {'loss': nan, 'rungs': [[10, inf]]}
    """
    return _decode_any(value)


def _decode_any(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _decode_any(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_any(v) for v in value]
    return decode_float(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Serializable:
    """``to_dict``/``from_dict``/``to_json``/``from_json`` for a frozen dataclass, in the one
    encoding of this module; the results (trace, statistics, proposal, response, tune result)
    inherit them instead of each writing the same four methods."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain python: lists and dicts (floats may be NaN/inf; :meth:`to_json` encodes them)."""
        return to_plain(self)

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        """Inverse of :meth:`to_dict` (also accepts the strict-JSON form of :meth:`to_json`)."""
        return from_plain(cls, d)

    def to_json(self, **kw: Any) -> str:
        """Strict JSON in autoclip's one encoding (see :mod:`autoclip.serialize`)."""
        return dumps(self, **kw)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        """Read back :meth:`to_json`."""
        return loads(text, cls)
