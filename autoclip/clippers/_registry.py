"""Name-based creation of clippers: one registry with frozen metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoclip.errors import ConfigError


@dataclass(frozen=True)
class ClipperInfo:
    """Registry entry: the name, the class, whether it adapts, and a one-line description."""

    name: str
    cls: type
    adaptive: bool
    description: str


_REGISTRY: dict[str, ClipperInfo] = {}


def register_clipper(name: str, description: str):
    """Class decorator: register a :class:`BaseClipper` subclass under ``name``."""

    def deco(cls):
        if name in _REGISTRY:
            raise ConfigError(f"a clipper named {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = ClipperInfo(name, cls, bool(cls.adaptive), description)
        return cls

    return deco


def list_clippers() -> list[ClipperInfo]:
    """Every registered clipper, in registration order."""
    return list(_REGISTRY.values())


def create_clipper(name: str, **params: Any):
    """Build a clipper from its registry name and parameters (the inverse of ``.config``)."""
    try:
        info = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown clipper {name!r}; choose one of {sorted(_REGISTRY)}") from None
    try:
        return info.cls(**params)
    except TypeError as exc:
        raise ConfigError(
            f"bad parameters for clipper {name!r}: {exc}; it accepts {info.cls._param_names()}"
        ) from None
