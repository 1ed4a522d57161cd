"""Running trials: one trial's objective, a worker's loop, and dead workers on one host."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoclip import serialize
from autoclip.errors import StorageError
from autoclip.objectives import evaluate
from autoclip.propose import Proposal
from autoclip.search._bracket import Bracket, Interrupted
from autoclip.search._budget import (
    _counted,
    _lineage,
    _rank,
    _retry_of,
    _Surplus,
    quiet_surplus,
)
from autoclip.search._fidelity import Plan
from autoclip.search._space import suggest_clipper
from autoclip.search._store import ATTR, MAX_RETRY, open_storage
from autoclip.search._study import _load_study, _Settings
from autoclip.search._watch import pid_alive, wait_limit
from autoclip.task import Task, load_task
from autoclip.training import train

ORPHAN_AFTER = 60.0  # seconds a running trial may go without its worker's pid


def _fail_dead(
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    dead: Collection[int] = (),
    watcher: int | None = None,
) -> list[int]:
    """Fail and retry trials whose worker died: by heartbeat where the storage has them, and
    by process id for workers on this host (journal files have no heartbeat).

    ``dead``: process ids known to be dead (a coordinator's children, seen by their handles).
    ``watcher``: the process that watches this process's sibling workers by their handles
    (the coordinator); a zombie it is the parent of is left to it. Returns the trials it
    failed, so the caller reads them again.
    """
    # Unconditionally: Optuna wraps an RDBStorage in a cache, so an isinstance check never
    # matched, and a worker waiting on a dead worker's trial waited forever. Storages without
    # heartbeats make this a no-op.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # and retried by the storage's callback
    host = socket.gethostname()
    now = datetime.datetime.now()
    suspects = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        who = _worker_of(t)
        pid = who.get("pid")
        if pid is None:
            # Its worker writes its pid first, milliseconds after the trial starts; a trial
            # without one for a minute lost its worker before (a crash, a full disk).
            started = t.datetime_start
            if started is None or (now - started).total_seconds() < ORPHAN_AFTER:
                continue
        elif who.get("host") != host or pid == os.getpid():
            continue
        elif pid not in dead and pid_alive(pid, watcher):
            continue
        suspects.append(t.number)
    if not suspects:
        return []
    # Read again: the heartbeat check above, or another worker, may have failed (and retried)
    # some of them since ``trials`` was read.
    trials = study.get_trials(deepcopy=False)
    parent = {t.number: _retry_of(t) for t in trials}
    failed = []
    for t in trials:
        if t.number not in suspects or t.state != TrialState.RUNNING:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                study.tell(t.number, state=TrialState.FAIL)  # raises if no longer running
        except Exception:  # another process got there first
            continue
        failed.append(t.number)
        _, retries = _lineage(parent, t.number)  # how often these parameters were retried
        if retries < MAX_RETRY:  # the heartbeat path's limit, too
            study.enqueue_trial(t.params, user_attrs={ATTR + "retry_of": t.number})
    return failed


def _worker_of(t: FrozenTrial) -> dict[str, Any]:
    ua = t.user_attrs
    return ua.get(ATTR + "worker") or {"host": ua.get(ATTR + "host"), "pid": ua.get(ATTR + "pid")}


def _objective(
    trial: optuna.Trial,
    task: Task,
    proposal: Proposal,
    settings: _Settings,
    n_trials: int,
    rec: dict[str, Any],
    bracket: Bracket | None,
) -> float | tuple[float, ...]:
    """One trial; what it learns goes into ``rec``, written once by the caller."""
    rank = _rank(trial.study.get_trials(deepcopy=False), trial.number)
    if rank >= n_trials:
        rec["surplus"] = True
        raise _Surplus(f"trial {trial.number} is beyond the budget of {n_trials} trials")

    clipper = suggest_clipper(trial, proposal, strategies=settings.strategies)
    lr_scale = 1.0
    if settings.tune_lr:
        r = settings.lr_range
        lr_scale = trial.suggest_float("lr_scale", 1.0 / r, r, log=True)
    rec["config"] = clipper.config
    rungs = bracket.plan.rungs if bracket is not None else ()
    curve: list[tuple[int, float]] = []
    single = settings.mode == "single"

    def report(step: int, loss: float) -> None:
        # Intermediate values at the rungs only: a storage write per sync point would
        # serialise workers on the storage's lock.
        curve.append((step, loss))
        if bracket is None:
            return
        bracket.check()
        k = len(rec.setdefault("rungs", []))
        if k >= len(rungs) or step + 1 < rungs[k]:
            return
        if single and math.isfinite(loss):
            trial.report(loss, step + 1)
        steps_so_far = max(1, int(clipper.steps))
        go = bracket.at_rung(trial.number, k, curve, float(clipper.clipped) / steps_so_far)
        rec["rungs"].append([step + 1, loss, bracket.scores(trial.number)[-1][0]])
        if not go:
            rec["steps_run"] = step + 1
            rec["objectives"] = list(bracket.scores(trial.number)[-1].objectives)
            raise optuna.TrialPruned(
                f"pruned at rung {k + 1} (step {step + 1} of {settings.steps})"
            )

    log = train(task, clipper, steps=settings.steps, lr_scale=lr_scale, callback=report)
    obj = evaluate(log)
    rec.update(
        objectives=list(obj.as_tuple()),
        steps_run=log.steps_run,
        diverged=log.diverged,
        reason=log.reason,
        clipped_fraction=log.clipped_fraction,
    )
    # A diverged run is infeasible, so it is never among Optuna's best trials.
    trial.set_constraint("diverged", 1.0 if log.diverged else 0.0)
    if single:
        trial.set_constraint("instability", obj.instability - settings.max_instability)
        return obj.final_loss
    return obj.as_tuple()


def _run_worker(
    study: optuna.Study,
    storage,
    task: Task,
    proposal: Proposal,
    settings: _Settings,
    n_trials: int,
    progress: Callable[[int, int], None] | None = None,
    poll: float = 1.0,
    share: int | None = None,
    *,
    watcher: int | None = None,
    between_trials: Callable[[], object] | None = None,
) -> None:
    """Run trials until the study holds ``n_trials`` counted, finished trials.

    With multi-fidelity (the default) each round is one bracket of up to ``share`` trials
    (this worker's part of the budget); without, trials run one at a time at full length.
    ``between_trials`` is called before each look at the study (the coordinator checks its
    worker processes there). Waiting for other workers' last trials has a deadline:
    :func:`~autoclip.search._watch.wait_limit` of the trials seen so far.
    """
    plan = Plan.make(settings.steps) if settings.fidelity else Plan(settings.steps, ())
    interrupted: list[optuna.Trial] = []
    quiet_surplus()

    def objective(trial: optuna.Trial, bracket: Bracket | None):
        rec: dict[str, Any] = {}
        trial.set_user_attr(ATTR + "worker", {"host": socket.gethostname(), "pid": os.getpid()})
        if bracket is not None:
            bracket.join(trial.number)
        try:
            return _objective(trial, task, proposal, settings, n_trials, rec, bracket)
        except (KeyboardInterrupt, Interrupted):
            rec["reason"] = "interrupted (KeyboardInterrupt)"
            interrupted.append(trial)
            raise
        except StorageError as exc:
            rec = None  # the storage cannot be written (a full disk): recording would fail too
            raise _StorageFailed(exc) from None
        except optuna.TrialPruned as exc:
            rec["reason"] = str(exc) or "pruned"
            raise
        except Exception as exc:  # the trial fails, the study goes on: keep why
            rec["reason"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if bracket is not None:
                failed = rec is None or rec.get("diverged") or rec.get("objectives") is None
                bracket.leave(trial.number, failed=bool(failed) and "rungs" in (rec or {}))
            if rec is not None:
                try:
                    # the one write of what it found, in strict JSON (inf objectives included)
                    trial.set_user_attr(ATTR + "trial", serialize.encode(rec))
                except StorageError as exc:
                    raise _StorageFailed(exc) from None

    def requeue_interrupted() -> None:
        # Optuna has marked the trials failed; the budget is the user's, not the
        # interrupt's, so the next run retries them with the same parameters.
        for t in interrupted:
            study.enqueue_trial(t.params, user_attrs={ATTR + "retry_of": t.number})

    waiting_since: float | None = None
    while True:
        if between_trials is not None:
            between_trials()
        trials = study.get_trials(deepcopy=False)  # the loop's one read of the trial list
        if _fail_dead(study, trials, watcher=watcher):
            trials = study.get_trials(deepcopy=False)
        counted = _counted(trials)
        waiting = sum(t.state == TrialState.WAITING for t in counted)
        running = [t for t in counted if t.state == TrialState.RUNNING]
        if progress is not None:
            progress(sum(t.state.is_finished() for t in counted), n_trials)
        free = waiting + n_trials - len(counted)
        if free > 0:
            waiting_since = None
            try:
                if not plan.rungs:
                    try:
                        study.optimize(lambda t: objective(t, None), n_trials=1, catch=(Exception,))
                    except KeyboardInterrupt:
                        requeue_interrupted()
                        raise
                    continue
                size = min(free, share or n_trials)
                bracket = Bracket(size, plan, pareto=settings.mode == "pareto")
                with _interrupts_to(bracket):
                    _run_bracket(study, lambda t, b=bracket: objective(t, b), size)
            except _StorageFailed as exc:
                raise exc.args[0] from None
            except AssertionError as exc:
                raise _storage_failure(exc) from None
            if bracket.interrupted:
                requeue_interrupted()
                raise KeyboardInterrupt
        elif running:
            # Wait for other workers' last trials (or for them to go stale), not forever.
            now = time.monotonic()
            waiting_since = now if waiting_since is None else waiting_since
            limit = wait_limit([_duration(t) for t in trials if t.state == TrialState.COMPLETE])
            if now - waiting_since > limit:
                raise StorageError(_still_running(running, now - waiting_since))
            time.sleep(poll)
        else:
            return


def _duration(t: FrozenTrial) -> float:
    if t.datetime_start is None or t.datetime_complete is None:
        return 0.0
    return (t.datetime_complete - t.datetime_start).total_seconds()


def _still_running(running: list[FrozenTrial], waited: float) -> str:
    who = ", ".join(
        f"trial {t.number} (pid {_worker_of(t).get('pid')} on {_worker_of(t).get('host')})"
        for t in running
    )
    return (
        f"waited {waited:.0f} s for the last trials of other workers to finish: {who}; "
        "they are still marked running: rerun later to collect them, or stop those processes "
        "(their trials are then retried)"
    )


class _StorageFailed(BaseException):
    """A :class:`StorageError` inside a trial (a full disk), carried out of ``optimize``.

    Not an ``Exception``: Optuna would treat it as the trial failing, log its traceback and
    try to write the failure to the very storage that cannot be written. The trial stays
    running in the storage, and the rerun fails and retries it as a dead worker's.
    """


def _storage_failure(exc: BaseException) -> BaseException:
    """The storage error behind ``exc``, else ``exc``.

    When writing a trial's result fails (a full disk), Optuna's trial loop raises
    ``AssertionError("Should not reach.")`` from its ``finally`` block, hiding the error;
    the error is still the assertion's context.
    """
    seen = exc.__context__
    while seen is not None:
        if isinstance(seen, StorageError):
            return seen
        seen = seen.__context__
    return exc


def _run_bracket(study: optuna.Study, objective, size: int) -> None:
    """``size`` trials, each in its own thread and its own ``study.optimize`` call.

    Not ``optimize(n_jobs=size)``: that reseeds the sampler at random in every thread, and a
    fixed seed would no longer give the same search. The bracket serialises training.
    """
    errors: list[BaseException] = []

    def one() -> None:
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,))
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)  # a timeout, so that Ctrl-C reaches the handler in the main thread
    if errors:
        raise _storage_failure(errors[0])


@contextlib.contextmanager
def _interrupts_to(bracket: Bracket):
    """Ctrl-C stops the bracket's trials (each fails as interrupted) instead of one thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: bracket.interrupt())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_process(
    target: str,
    storage: str,
    study_name: str,
    n_trials: int,
    worker: int,
    seed: int | None,
    heartbeat: int,
    share: int | None = None,
) -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker process
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = load_task(target)
    store = open_storage(storage, heartbeat_interval=heartbeat)
    # Started before its coordinator has created the study (see tune): wait while it probes.
    try:
        study, proposal, settings = _load_study(
            store, study_name, worker=worker, seed=seed, coordinator=os.getppid(), poll=0.1
        )
    except KeyboardInterrupt:  # Ctrl-C during the probe: the coordinator says so, once
        return
    # Started with SIGINT ignored (see tune): from now on a Ctrl-C interrupts this worker's
    # trials, which are failed as interrupted and retried by the next run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _run_worker(
            study, store, task, proposal, settings, n_trials, share=share, watcher=os.getppid()
        )
    except KeyboardInterrupt:  # its interrupted trials are requeued; the coordinator says so
        return
