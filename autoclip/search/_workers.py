"""Running trials: one trial's objective, a worker's loop, and dead workers on one host."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoclip.objectives import evaluate
from autoclip.propose import Proposal
from autoclip.search._bracket import Bracket, Interrupted
from autoclip.search._budget import _counted, _lineage, _rank, _retry_of, _Surplus
from autoclip.search._fidelity import Plan
from autoclip.search._space import suggest_clipper
from autoclip.search._storage import ATTR, MAX_RETRY, open_storage
from autoclip.search._study import _load_study, _pid_alive, _Settings
from autoclip.task import Task, load_task
from autoclip.training import train


def _fail_dead(study: optuna.Study, trials: Sequence[FrozenTrial]) -> bool:
    """Fail and retry trials whose worker died: by heartbeat where the storage has them, and
    by process id for workers on this host (journal files have no heartbeat). True when it
    changed something (the caller then reads the trials again)."""
    # Unconditionally: Optuna wraps an RDBStorage in a cache, so an isinstance check never
    # matched, and a worker waiting on a dead worker's trial waited forever. Storages without
    # heartbeats make this a no-op.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        changed = bool(optuna.storages.fail_stale_trials(study))
    host = socket.gethostname()
    parent = {t.number: _retry_of(t) for t in trials}
    for t in trials:
        who = _worker_of(t)
        if t.state != TrialState.RUNNING or who.get("host") != host:
            continue
        pid = who.get("pid")
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                study.tell(t.number, state=TrialState.FAIL)
            ok = True
        except Exception:  # another process got there first
            ok = False
        changed = True
        _, retries = _lineage(parent, t.number)  # how often these parameters were retried
        if ok is not False and retries < MAX_RETRY:  # the heartbeat path's limit, too
            study.enqueue_trial(t.params, user_attrs={ATTR + "retry_of": t.number})
    return changed


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
            rec["objectives"] = list(bracket.scores(trial.number)[-1])
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
) -> None:
    """Run trials until the study holds ``n_trials`` counted, finished trials.

    With multi-fidelity (the default) each round is one bracket of up to ``share`` trials
    (this worker's part of the budget); without, trials run one at a time at full length.
    """
    plan = Plan.make(settings.steps) if settings.fidelity else Plan(settings.steps, ())
    interrupted: list[optuna.Trial] = []

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
        except optuna.TrialPruned as exc:
            rec["reason"] = str(exc) or "pruned"
            raise
        except Exception as exc:  # the trial fails, the study goes on: keep why
            rec["reason"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if bracket is not None:
                failed = rec.get("diverged") or rec.get("objectives") is None
                bracket.leave(trial.number, failed=bool(failed) and "rungs" in rec)
            trial.set_user_attr(ATTR + "trial", rec)  # the one write of what the trial found

    def requeue_interrupted() -> None:
        # Optuna has marked the trials failed; the budget is the user's, not the
        # interrupt's, so the next run retries them with the same parameters.
        for t in interrupted:
            study.enqueue_trial(t.params, user_attrs={ATTR + "retry_of": t.number})

    while True:
        trials = study.get_trials(deepcopy=False)  # the loop's one read of the trial list
        if _fail_dead(study, trials):
            trials = study.get_trials(deepcopy=False)
        counted = _counted(trials)
        waiting = sum(t.state == TrialState.WAITING for t in counted)
        running = any(t.state == TrialState.RUNNING for t in counted)
        if progress is not None:
            progress(sum(t.state.is_finished() for t in counted), n_trials)
        free = waiting + n_trials - len(counted)
        if free > 0:
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
            if bracket.interrupted:
                requeue_interrupted()
                raise KeyboardInterrupt
        elif running:
            time.sleep(poll)  # wait for other workers' last trials (or for them to go stale)
        else:
            return


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
        raise errors[0]


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
    study, proposal, settings = _load_study(store, study_name, worker=worker, seed=seed)
    _run_worker(study, store, task, proposal, settings, n_trials, share=share)
