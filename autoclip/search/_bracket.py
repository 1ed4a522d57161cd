"""A bracket of trials trained in one process, one at a time, paused at each rung.

Each trial of a bracket runs in its own thread (Optuna's ``n_jobs``), but only the thread
holding the bracket's turn trains; at a rung a trial hands the turn on and waits until every
member has reached that rung (or ended), then the rung's decision (:func:`_fidelity.promote`)
says whether it continues or is pruned. The threads are coroutines: training stays serial and
deterministic, and a paused run keeps its model and optimizer in memory instead of retraining.
Random-number state is saved at a pause and restored on resuming, so a continued run draws
what an uninterrupted one would. The cost of this is memory: every member of a bracket (by
default 9 models with their optimizers) stays alive until the bracket settles; for a model
that does not fit nine times, use fewer trials per worker or ``fidelity=False``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from autoclip.search._fidelity import Plan, RungScore, partial_objectives, promote

JOIN_GRACE = 5.0  # seconds a rung-0 decision waits for members that have not started yet


class Interrupted(Exception):
    """Raised inside a trial when the user interrupted the bracket (Ctrl-C)."""


def _rng_state():
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.random.get_rng_state(), cuda, np.random.get_state(), random.getstate()


def _set_rng_state(state) -> None:
    cpu, cuda, np_state, py_state = state
    torch.random.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(np_state)
    random.setstate(py_state)


class Bracket:
    """Successive halving over ``size`` trials of one process (see the module docstring)."""

    def __init__(self, size: int, plan: Plan, pareto: bool) -> None:
        self.size, self.plan, self.pareto = size, plan, pareto
        self.keep = plan.keep(size)
        self.interrupted = False
        self._cond = threading.Condition()
        self._holder: int | None = None  # the member that trains now
        self._waiting: set[int] = set()  # members ready to train, served lowest number first
        self._joined: set[int] = set()
        self._ended: set[int] = set()
        self._arrived: list[dict[int, RungScore]] = [{} for _ in plan.rungs]
        self._promoted: list[list[int] | None] = [None for _ in plan.rungs]
        self._order: list[list[int]] = [[] for _ in plan.rungs]  # each rung's full ranking
        self._from: dict[int, int] = {}  # member -> the rung it was last promoted from
        self._parked: set[int] = set()  # not promoted, kept paused in case one is needed
        self._started = time.monotonic()

    # -- a member's side ---------------------------------------------------------------------
    def join(self, key: int) -> None:
        """Enter the bracket and wait for the turn to train (trial numbers in order)."""
        with self._cond:
            self._joined.add(key)
            self._cond.notify_all()
        self._acquire(key)

    def leave(self, key: int, failed: bool = False) -> None:
        """The member ended (finished, pruned, failed). A promoted member that ``failed``
        (diverged, or raised) is replaced by the next of the rung it was promoted from, so
        that a divergence after a rung does not leave the bracket without a survivor."""
        with self._cond:
            if failed and key in self._from:
                rung = self._from[key]
                spare = [k for k in self._order[rung] if k in self._parked]
                if spare:
                    self._parked.discard(spare[0])
                    self._promoted[rung].append(spare[0])
                    self._from[spare[0]] = rung
            self._ended.add(key)
            self._waiting.discard(key)
            if self._holder == key:
                self._holder = None
            self._decide_all()
            self._cond.notify_all()

    def at_rung(
        self, key: int, rung: int, curve: Sequence[tuple[int, float]], clipped: float = 0.0
    ) -> bool:
        """Report ``curve`` at rung ``rung`` (and the fraction of steps ``clipped`` so far);
        True when the trial continues (its turn again).

        A member not promoted stays paused until the bracket is settled (every other member
        ended or paused too), then is pruned: until then it may replace a failed one.
        """
        scores = partial_objectives(curve, clipped)
        state = _rng_state()
        with self._cond:
            self._arrived[rung][key] = scores
            self._holder = None
            self._decide_all()
            self._cond.notify_all()
            while self._promoted[rung] is None and not self.interrupted:
                self._cond.wait(0.2)
                self._decide_all()
            if key not in (self._promoted[rung] or ()):  # parked by the decision
                while not (self.interrupted or key in self._promoted[rung] or self._settled()):
                    self._cond.wait(0.2)
                self._parked.discard(key)
            go = key in (self._promoted[rung] or ())
        self.check()
        if go:
            self._acquire(key)
            _set_rng_state(state)
        return go

    def _settled(self) -> bool:
        return self._all_joined() and len(self._ended | self._parked) >= len(self._joined)

    def _acquire(self, key: int) -> None:
        with self._cond:
            self._waiting.add(key)
            while not self.interrupted and not (
                self._holder is None and key == min(self._waiting) and self._all_joined()
            ):
                self._cond.wait(0.2)
            self._waiting.discard(key)
            if not self.interrupted:
                self._holder = key
            self._cond.notify_all()
        self.check()

    def _all_joined(self) -> bool:
        return len(self._joined) >= self.size or time.monotonic() - self._started > JOIN_GRACE

    def check(self) -> None:
        if self.interrupted:
            raise Interrupted("interrupted (KeyboardInterrupt)")

    def interrupt(self) -> None:
        with self._cond:
            self.interrupted = True
            self._cond.notify_all()

    def scores(self, key: int) -> list[RungScore]:
        """What ``key`` reported at each rung it reached."""
        return [a[key] for a in self._arrived if key in a]

    # -- the decisions -----------------------------------------------------------------------
    def _decide_all(self) -> None:
        for rung in range(len(self.plan.rungs)):
            if self._promoted[rung] is None:
                self._decide(rung)
            if self._promoted[rung] is None:
                return

    def _decide(self, rung: int) -> None:
        if rung == 0:
            if not self._all_joined():
                return
            expected = set(self._joined)
        else:
            expected = set(self._promoted[rung - 1] or ())
        arrived = self._arrived[rung]
        if any(k not in arrived and k not in self._ended for k in expected):
            return
        scores = {k: v for k, v in arrived.items() if k in expected}
        self._order[rung], _ = promote(scores, len(scores), self.pareto)
        self._promoted[rung] = list(self._order[rung][: self.keep[rung]])
        for k in self._promoted[rung]:
            self._from[k] = rung
        # The others pause here, at once (not when their threads next run), so that a
        # survivor failing right away finds its replacement among them.
        self._parked |= set(scores) - set(self._promoted[rung])
