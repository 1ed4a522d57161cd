"""Errors raised by autoclip.

Every error derives from :class:`AutoclipError`, and also from the builtin a caller would
naturally catch (``ValueError`` for bad input, ``RuntimeError`` for failures at run time), so
``except ValueError`` keeps working for code that knows nothing about autoclip.
Messages state the rule and the bad value, and name the fix.
"""

from __future__ import annotations


class AutoclipError(Exception):
    """Root of every error autoclip raises on purpose.

    >>> import autoclip
    >>> try:
    ...     autoclip.create_clipper("magic")
    ... except AutoclipError as exc:
    ...     print(type(exc).__name__, "-", exc)  # doctest: +ELLIPSIS
    ConfigError - unknown clipper 'magic'; choose one of ['agc', 'norm', ...]
    """


class ConfigError(AutoclipError, ValueError):
    """A clipper, proposal or search was configured with an invalid value.

    >>> from autoclip import NormClip
    >>> NormClip(max_norm=-1.0)
    Traceback (most recent call last):
    autoclip.errors.ConfigError: `max_norm` must be a finite number > 0, but got -1.0
    >>> issubclass(ConfigError, ValueError)
    True
    """


class TaskError(AutoclipError, ValueError):
    """A Task (model, optimizer, loss or data) cannot be used as given.

    >>> import torch
    >>> from autoclip import Task
    >>> Task(model_fn=lambda: torch.nn.Linear(2, 1), optimizer_fn=torch.optim.SGD,
    ...      loss_fn=lambda model, batch: model(batch).sum(), batches=iter([torch.ones(2)]))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    autoclip.errors.TaskError: Task.batches is a one-shot iterator, ... a DataLoader instead
    """


class NonFiniteGradientError(AutoclipError, RuntimeError):
    """Gradients were NaN/inf and the clipper's policy is ``nonfinite="raise"``.

    >>> import torch
    >>> from autoclip import NormClip
    >>> p = torch.nn.Parameter(torch.zeros(1))
    >>> p.grad = torch.tensor([float("nan")])
    >>> NormClip(1.0, nonfinite="raise")([p])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    autoclip.errors.NonFiniteGradientError: the total norm ... is non-finite (nan); ...
    """


class StorageError(AutoclipError, RuntimeError):
    """An Optuna storage could not be opened or does not match the requested study.

    A run-time failure (the CLI exits 1 on it), so ``except RuntimeError`` catches it too:

    >>> issubclass(StorageError, RuntimeError), issubclass(StorageError, AutoclipError)
    (True, True)
    """


class UnsupportedError(AutoclipError, NotImplementedError):
    """A setup autoclip does not handle (yet), e.g. a clipper on sharded gradients it cannot
    measure globally; the message names what to use instead.

    >>> issubclass(UnsupportedError, NotImplementedError)
    True
    """
