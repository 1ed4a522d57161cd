"""Errors raised by autoclip.

Every error derives from :class:`AutoclipError`, and also from the builtin a caller would
naturally catch (``ValueError`` for bad input, ``RuntimeError`` for failures at run time), so
``except ValueError`` keeps working for code that knows nothing about autoclip.
Messages state the rule and the bad value, and name the fix.
"""

from __future__ import annotations


class AutoclipError(Exception):
    """Root of every error autoclip raises on purpose."""


class ConfigError(AutoclipError, ValueError):
    """A clipper, proposal or search was configured with an invalid value."""


class TaskError(AutoclipError, ValueError):
    """A Task (model, optimizer, loss or data) cannot be used as given."""


class NonFiniteGradientError(AutoclipError, RuntimeError):
    """Gradients were NaN/inf and the clipper's policy is ``nonfinite="raise"``."""


class StorageError(AutoclipError, RuntimeError):
    """An Optuna storage could not be opened or does not match the requested study."""


class UnsupportedError(AutoclipError, NotImplementedError):
    """A setup autoclip does not handle (yet), e.g. a clipper on sharded gradients it cannot
    measure globally; the message names what to use instead."""
