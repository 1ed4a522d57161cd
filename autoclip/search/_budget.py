"""Budget accounting: which trials count towards ``n_trials``, across workers and retries."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from optuna.trial import FrozenTrial

from autoclip.search._store import ATTR


def _retry_of(t: FrozenTrial) -> int | None:
    own = t.user_attrs.get(ATTR + "retry_of")
    if own is not None:
        return own
    # Optuna's own record: the whole chain, oldest first; the parent is the last entry.
    history = t.system_attrs.get("retry_history") or []
    return history[-1] if history else None


def _excluded(trials: Sequence[FrozenTrial]) -> set[int]:
    """Trials that do not count towards n_trials: surplus ones, and failures that were retried."""
    # a surplus trial says so in its one record (written by _workers._objective's caller)
    out = {t.number for t in trials if (t.user_attrs.get(ATTR + "trial") or {}).get("surplus")}
    out |= {r for t in trials if (r := _retry_of(t)) is not None}
    return out


def _counted(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    excluded = _excluded(trials)
    return [t for t in trials if t.number not in excluded]


def _lineage(parent: dict[int, int | None], number: int) -> tuple[int, int]:
    """(the first trial of ``number``'s retry chain, how many retries lead to ``number``)."""
    depth = 0
    while parent.get(number) is not None:
        number, depth = parent[number], depth + 1
    return number, depth


def _rank(trials: Sequence[FrozenTrial], number: int) -> int:
    """How many counted trials come before trial ``number`` in the budget.

    Trials take budget slots in the order they were created, except that a retry takes the
    slot of the trial it retries: it replaces a trial that already had its place (else a
    retry created after still-waiting candidates would be cut off as surplus).
    """
    parent = {t.number: _retry_of(t) for t in trials}
    excluded, mine = _excluded(trials), _lineage(parent, number)
    return sum(
        1
        for t in trials
        if t.number != number and t.number not in excluded and _lineage(parent, t.number) < mine
    )


class _Surplus(Exception):
    """Raised inside a trial started beyond the budget (a race between workers)."""


class _QuietSurplus(logging.Filter):
    """Drops Optuna's failure warnings for surplus trials: a worker that lost the race for the
    last slot of the budget is not a failure to report (with a traceback, in a worker process
    that has no CLI filter), and the trial's record says it was surplus."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        m = re.match(r"Trial (\d+) failed", text)
        if isinstance(exc, _Surplus) or "_Surplus(" in text:
            if m:
                self.dropped.add(m.group(1))
            return False
        return not (m and m.group(1) in self.dropped and text.endswith("with value None."))


def quiet_surplus() -> None:
    """Put :class:`_QuietSurplus` on the handlers of Optuna's logger (once)."""
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _QuietSurplus) for f in handler.filters):
            handler.addFilter(_QuietSurplus())
