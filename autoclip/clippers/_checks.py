"""The checks clippers run on their constructor arguments: one-line ConfigErrors."""

from __future__ import annotations

from typing import Any

from autoclip.errors import ConfigError


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """Raise a ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"`{name}` must be one of {choices}, but got {value!r}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise a ConfigError unless ``value`` is a finite number > 0 (or >= 0)."""
    # a bool is an int to Python, but True as a threshold is a mistake, not 1.0
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and value == value and value not in (float("inf"),)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        rule = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"`{name}` must be a finite number {rule}, but got {value!r}")


def check_fraction(name: str, value: float) -> None:
    """Raise a ConfigError unless ``0 < value < 1``."""
    if not (isinstance(value, int | float) and not isinstance(value, bool) and 0.0 < value < 1.0):
        raise ConfigError(f"`{name}` must satisfy 0 < {name} < 1, but got {value!r}")
