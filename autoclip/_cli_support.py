"""What every ``autoclip`` command shares: error handling, progress bars, option checks.

:func:`_run` turns autoclip's errors (and Ctrl-C) into one line and the exit codes that
:mod:`autoclip.cli` documents; the rest are the option callbacks and output helpers of its
commands.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import tempfile

import click

from autoclip.errors import AutoclipError, ConfigError, TaskError

DEFAULT_OUT = "autoclip-out"


class _Ctx:
    debug = False
    running = False  # set once the TARGET is loaded: from then on a failure is a run-time one


EXIT_INTERRUPTED = 130


def _interrupted_line() -> str:
    params = click.get_current_context().params
    storage = params.get("storage")
    if "trials" not in params:  # probe, report, studies: nothing half-done is kept
        return "interrupted; nothing was written"
    if storage in (None, ":memory:"):
        return "interrupted; the trials were kept in memory only (--storage :memory:)"
    return f"interrupted; finished trials are saved in {storage}: rerun the same command to resume"


def _run(fn):
    """Turn autoclip's errors into one clean line and the right exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _Ctx.running = False
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            if _Ctx.debug:
                raise
            click.echo(_interrupted_line(), err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            if _Ctx.debug:
                raise
            if isinstance(exc, ConfigError) and not _Ctx.running:
                raise click.UsageError(str(exc)) from None
            if isinstance(exc, AutoclipError):
                raise click.ClickException(str(exc)) from None
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
            ) from None

    return wrapper


def _progress(label: str, enabled: bool):
    """A (callback, close) pair driving a click progress bar on stderr."""
    if not enabled:
        return None, lambda: None
    state = {"bar": None, "done": 0}

    def update(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr)
            state["bar"].__enter__()
        state["bar"].update(max(0, done - state["done"]))
        state["done"] = max(done, state["done"])

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)

    return update, close


def _weights(ctx, param, value):
    if value is None:
        return None
    try:
        w = tuple(float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected three numbers like 1,0.2,0.5, got {value!r}") from None
    if len(w) != 3 or not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
        raise click.BadParameter(
            f"expected three non-negative weights (final loss, speed, instability) with a "
            f"positive sum, got {value!r}"
        )
    return w


def _load(target: str):
    """Load TARGET; a target that cannot be loaded is a usage error (exit 2)."""
    from autoclip.task import load_task

    try:
        task = load_task(target)
    except TaskError as exc:
        raise click.BadParameter(str(exc), param_hint="TARGET") from None
    _Ctx.running = True
    return task


class _OneLine(logging.Filter):
    """Optuna's trial-failure warnings without their tracebacks (the reason is in the result);
    an interrupted trial's warning and the redundant "failed with value None" not at all."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        text = record.getMessage()
        if isinstance(exc, KeyboardInterrupt) or "KeyboardInterrupt" in text:
            return False
        if text.endswith("failed with value None."):
            return False
        record.exc_info = None
        record.exc_text = None
        return True


def _writable_dir(ctx, param, value):
    """--out must be a folder this user can write, found out now, not after a long search."""
    try:
        os.makedirs(value, exist_ok=True)
        with tempfile.TemporaryFile(dir=value):
            pass
    except OSError as exc:
        raise click.BadParameter(
            f"cannot write to {value!r} ({exc.strerror or exc}); pass a writable folder"
        ) from None
    return value


def _out_option(help: str):
    return click.option(
        "--out",
        "out_dir",
        envvar="AUTOCLIP_OUT",
        default=DEFAULT_OUT,
        show_default=True,
        type=click.Path(file_okay=False),
        callback=_writable_dir,
        help=help,
    )


def _emit(text: str, quiet: bool) -> None:
    if not quiet:
        click.echo(text)


def _exit_if_nothing_chosen(result) -> None:
    """Every trial diverged: say so on stderr and exit 1 (the report is written)."""
    if result.chosen is None:
        click.echo(f"Error: {result.warning}", err=True)
        sys.exit(1)
