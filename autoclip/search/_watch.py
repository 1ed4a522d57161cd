"""Watching worker processes: who is alive, who died, and bounded waits for the others.

A local worker is a child process of its coordinator. When it dies (SIGKILL, out of memory)
it stays a *zombie* until the coordinator reaps it, and a zombie passes ``os.kill(pid, 0)``:
asking by process id alone, everyone would wait for its trial forever. So:

* the coordinator watches its children by their process handles (:class:`LocalWorkers`):
  a child that exited is noticed without being reaped (``waitid(WNOWAIT)``), its running
  trials are failed and retried, and only then is it reaped (so no other worker can see its
  process id vanish before its trials are failed, and retry them a second time);
* every other process asks :func:`pid_alive`, which also treats a zombie as dead, unless
  its parent is the study's coordinator, which handles its own children as above.

Every wait here has a deadline and says what it waited for.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import warnings
from collections.abc import Callable, Sequence

from autoclip.errors import StorageError

__all__ = ["LocalWorkers", "describe_exit", "pid_alive", "wait_limit"]

WAIT_FLOOR = 600.0  # seconds: the least a worker waits for another's trial before giving up


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) from /proc (Linux), or None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the name may hold spaces and parentheses
    return fields[0], int(fields[1])


def pid_alive(pid: int, coordinator_pid: int | None = None) -> bool:
    """Whether process ``pid`` on this host is still running.

    A zombie is dead, except when its parent is ``coordinator_pid``: the coordinator watches
    its own children and fails their trials before reaping them.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    stat = _stat(pid)
    if stat is not None and stat[0] in ("Z", "X"):
        return coordinator_pid is not None and stat[1] == coordinator_pid
    return True


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def wait_limit(durations: Sequence[float]) -> float:
    """How long to wait for another worker's trial: 3x the longest trial so far, >= 10 min."""
    return max([WAIT_FLOOR, *(3.0 * d for d in durations)])


class LocalWorkers:
    """The coordinator's worker processes, watched by their handles.

    ``processes`` are started ``multiprocessing.Process`` objects. :meth:`check` is called
    between trials; ``on_death(pid, code)`` fails and retries the dead worker's trials.
    """

    def __init__(
        self, processes: Sequence, on_death: Callable[[int, int | None], list[int] | None]
    ) -> None:
        self._alive = list(processes)
        self._on_death = on_death
        self.died: list[tuple[int, str]] = []  # (pid, how) of workers that did not end well

    def _exited(self, p) -> bool:
        if hasattr(os, "waitid"):
            try:  # look without reaping: the zombie keeps its pid until its trials are failed
                return os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            except ChildProcessError:
                return True  # already reaped
        return not p.is_alive()

    def check(self) -> None:
        """Handle every worker that has exited since the last check."""
        for p in list(self._alive):
            if not self._exited(p):
                continue
            code = p.exitcode  # reaps it
            if code != 0:
                failed = self._on_death(p.pid, code) or []
                how = describe_exit(code)
                self.died.append((p.pid, how))
                what = (
                    f"; its trial {', '.join(map(str, failed))} was failed and retried with the "
                    "same parameters"
                    if failed
                    else ""
                )
                warnings.warn(
                    f"worker process (pid {p.pid}) died ({how}){what}",
                    RuntimeWarning,
                    stacklevel=2,
                )
            if p.exitcode is not None:
                self._alive.remove(p)

    def stop(self, grace: float) -> None:
        """After a Ctrl-C: give the workers ``grace`` seconds to end on their own (one that
        was running trials took the Ctrl-C too, and fails them as interrupted), then stop the
        rest (one still starting had it ignored); a stopped worker's trial is retried by the
        rerun, as a dead worker's."""
        deadline = time.monotonic() + grace
        for p in list(self._alive):
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self._alive:
            if p.exitcode is None:
                p.terminate()
                p.join(timeout=10)
        self._alive = []

    def join(self, limit: float, what: str = "its last trial") -> None:
        """Wait up to ``limit`` seconds for every worker to finish ``what``; then stop them.

        Raises:
            StorageError: naming the workers still running when the limit passed.
        """
        deadline = time.monotonic() + limit
        while self._alive and time.monotonic() < deadline:
            self.check()
            if self._alive:
                self._alive[0].join(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
        self.check()
        if self._alive:
            late = [p.pid for p in self._alive]
            for p in self._alive:
                p.terminate()
                p.join(timeout=10)
            raise StorageError(
                f"worker process(es) {late} on {socket.gethostname()} did not finish {what} "
                f"within {limit:.0f} s and were stopped; their trials are retried by a rerun"
            )
