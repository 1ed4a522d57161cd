"""Running trials: one trial's objective, a worker's loop, and dead workers on one host."""

from __future__ import annotations

import datetime
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Collection

import optuna
from optuna.trial import TrialState

from autoclip.errors import StorageError
from autoclip.objectives import evaluate
from autoclip.propose import Proposal
from autoclip.search._budget import _counted, _lineage, _rank, _retry_of, _Surplus
from autoclip.search._space import suggest_clipper
from autoclip.search._storage import ATTR, MAX_RETRY, open_storage
from autoclip.search._study import _HAS_SET_CONSTRAINT, _load_study, _Settings
from autoclip.search._watch import pid_alive, wait_limit
from autoclip.task import Task, load_task
from autoclip.training import TrainLog, train

ORPHAN_AFTER = 60.0  # seconds a running trial may go without its worker's pid


def _fail_dead(
    study: optuna.Study, dead: Collection[int] = (), watcher: int | None = None
) -> list[int]:
    """Fail and retry trials whose worker died: by heartbeat where the storage has them, and
    by process id for workers on this host (journal files have no heartbeat).

    ``dead``: process ids known to be dead (a coordinator's children, seen by their handles).
    ``watcher``: the process that watches this process's sibling workers by their handles
    (the coordinator); a zombie it is the parent of is left to it. Returns the failed trials.
    """
    # Unconditionally: Optuna wraps an RDBStorage in a cache, so an isinstance check never
    # matched, and a worker waiting on a dead worker's trial waited forever. Storages without
    # heartbeats make this a no-op.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False)
    parent = {t.number: _retry_of(t) for t in trials}
    failed = []
    now = datetime.datetime.now()
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        pid = t.user_attrs.get(ATTR + "pid")
        if pid is None:
            # Its worker writes its pid first, milliseconds after the trial starts; a trial
            # without one for a minute lost its worker before (a crash, a full disk).
            started = t.datetime_start
            if started is None or (now - started).total_seconds() < ORPHAN_AFTER:
                continue
        elif t.user_attrs.get(ATTR + "host") != host or pid == os.getpid():
            continue
        elif pid not in dead and pid_alive(pid, watcher):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        except Exception:  # another process got there first
            continue
        failed.append(t.number)
        _, retries = _lineage(parent, t.number)  # how often these parameters were retried
        if retries < MAX_RETRY:  # the heartbeat path's limit, too
            study.enqueue_trial(t.params, user_attrs={ATTR + "retry_of": t.number})
    return failed


def _objective(
    trial: optuna.Trial,
    task: Task,
    proposal: Proposal,
    settings: _Settings,
    n_trials: int,
) -> float | tuple[float, ...]:
    trial.set_user_attr(ATTR + "pid", os.getpid())
    trial.set_user_attr(ATTR + "host", socket.gethostname())
    rank = _rank(trial.study.get_trials(deepcopy=False), trial.number)
    if rank >= n_trials:
        trial.set_user_attr(ATTR + "surplus", True)
        raise _Surplus(f"trial {trial.number} is beyond the budget of {n_trials} trials")

    clipper = suggest_clipper(trial, proposal, strategies=settings.strategies)
    lr_scale = 1.0
    if settings.tune_lr:
        r = settings.lr_range
        lr_scale = trial.suggest_float("lr_scale", 1.0 / r, r, log=True)
    trial.set_user_attr(ATTR + "config", clipper.config)

    def report(step: int, loss: float) -> None:
        # Only single mode reports: a storage write per sync point would serialise workers
        # on the storage's lock. A pruned trial records how far it got, for the accounting.
        if settings.mode == "single" and math.isfinite(loss):
            trial.report(loss, step)
            if trial.should_prune():
                trial.set_user_attr(ATTR + "steps_run", step + 1)
                raise optuna.TrialPruned(f"pruned at step {step} (loss {loss:.4g})")

    log = train(task, clipper, steps=settings.steps, lr_scale=lr_scale, callback=report)
    obj = evaluate(log)
    _record_log(trial, log, obj.as_tuple())
    if settings.mode == "single":
        excess = obj.instability - settings.max_instability
        if _HAS_SET_CONSTRAINT:
            trial.set_constraint("instability", excess)
        else:
            trial.set_user_attr(ATTR + "constraint", [excess])
        return obj.final_loss
    return obj.as_tuple()


def _record_log(trial: optuna.Trial, log: TrainLog, values: tuple[float, ...]) -> None:
    trial.set_user_attr(ATTR + "objectives", list(values))
    trial.set_user_attr(ATTR + "steps_run", log.steps_run)
    trial.set_user_attr(ATTR + "diverged", log.diverged)
    trial.set_user_attr(ATTR + "reason", log.reason)
    trial.set_user_attr(ATTR + "clipped_fraction", log.clipped_fraction)


def _run_worker(
    study: optuna.Study,
    task: Task,
    proposal: Proposal,
    settings: _Settings,
    n_trials: int,
    progress: Callable[[int, int], None] | None = None,
    poll: float = 1.0,
    *,
    watcher: int | None = None,
    between_trials: Callable[[], object] | None = None,
) -> None:
    """Run trials until the study holds ``n_trials`` counted, finished trials.

    ``between_trials`` is called before each look at the study (the coordinator checks its
    worker processes there). Waiting for other workers' last trials has a deadline:
    :func:`~autoclip.search._watch.wait_limit` of the trials seen so far.
    """

    interrupted: list[optuna.Trial] = []

    def objective(trial: optuna.Trial):
        try:
            return _objective(trial, task, proposal, settings, n_trials)
        except KeyboardInterrupt:
            trial.set_user_attr(ATTR + "reason", "interrupted (KeyboardInterrupt)")
            interrupted.append(trial)
            raise
        except StorageError:
            raise  # the storage cannot be written (a full disk): writing why would fail too
        except optuna.TrialPruned as exc:
            trial.set_user_attr(ATTR + "reason", str(exc) or "pruned")
            raise
        except Exception as exc:  # the trial fails, the study goes on: keep why
            trial.set_user_attr(ATTR + "reason", f"{type(exc).__name__}: {exc}")
            raise

    waiting_since: float | None = None
    while True:
        if between_trials is not None:
            between_trials()
        _fail_dead(study, watcher=watcher)
        trials = study.get_trials(deepcopy=False)
        counted = _counted(trials)
        waiting = any(t.state == TrialState.WAITING for t in counted)
        running = [t for t in counted if t.state == TrialState.RUNNING]
        if progress is not None:
            progress(sum(t.state.is_finished() for t in counted), n_trials)
        if waiting or len(counted) < n_trials:
            waiting_since = None
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,))
            except AssertionError as exc:
                raise _storage_failure(exc) from None
            except KeyboardInterrupt:
                # Optuna has marked the trial failed; the budget is the user's, not the
                # interrupt's, so the next run retries it with the same parameters.
                for t in interrupted:
                    study.enqueue_trial(t.params, user_attrs={ATTR + "retry_of": t.number})
                raise
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


def _duration(t: optuna.trial.FrozenTrial) -> float:
    if t.datetime_start is None or t.datetime_complete is None:
        return 0.0
    return (t.datetime_complete - t.datetime_start).total_seconds()


def _still_running(running: list[optuna.trial.FrozenTrial], waited: float) -> str:
    who = ", ".join(
        f"trial {t.number} (pid {t.user_attrs.get(ATTR + 'pid')} on "
        f"{t.user_attrs.get(ATTR + 'host')})"
        for t in running
    )
    return (
        f"waited {waited:.0f} s for the last trials of other workers to finish: {who}; "
        "they are still marked running: rerun later to collect them, or stop those processes "
        "(their trials are then retried)"
    )


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


def _worker_process(
    target: str,
    storage: str,
    study_name: str,
    n_trials: int,
    worker: int,
    seed: int | None,
    heartbeat: int,
) -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker process
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = load_task(target)
    study, proposal, settings = _load_study(
        open_storage(storage, heartbeat_interval=heartbeat), study_name, worker=worker, seed=seed
    )
    _run_worker(study, task, proposal, settings, n_trials, watcher=os.getppid())
