"""``tune(task)``: probe, search, baselines, result."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from autoclip import serialize
from autoclip.errors import ConfigError
from autoclip.objectives import NAMES, evaluate
from autoclip.search._fidelity import Plan
from autoclip.search._fingerprint import fingerprint
from autoclip.search._result import TrialRecord, TuneResult, _result
from autoclip.search._space import check_strategies
from autoclip.search._store import ATTR, HEARTBEAT_INTERVAL, open_storage
from autoclip.search._study import (
    MODES,
    _check_compatible,
    _create_if_absent,
    _load_study,
    _Settings,
)
from autoclip.search._watch import LocalWorkers, wait_limit
from autoclip.search._workers import _fail_dead, _run_worker, _worker_process
from autoclip.task import Task, load_task
from autoclip.training import train


def _baselines(task: Task, steps: int, steps_so_far: dict[str, Any]) -> dict[str, TrialRecord]:
    arms = {"no clipping": None, "fixed norm 1.0": {"name": "norm", "max_norm": 1.0}}
    out = {}
    for i, (name, config) in enumerate(arms.items()):
        if name in steps_so_far:
            out[name] = TrialRecord.from_dict(steps_so_far[name])
            continue
        log = train(task, config, steps=steps)
        obj = evaluate(log)
        out[name] = TrialRecord(
            number=-(i + 1),
            state="COMPLETE",
            config=config,
            values=obj.as_tuple(),
            diverged=log.diverged,
            reason=log.reason,
            clipped_fraction=log.clipped_fraction,
            steps_run=log.steps_run,
        )
    return out


INTERRUPT_GRACE = 10.0  # seconds the workers get to end on their own after a Ctrl-C


@contextlib.contextmanager
def _sigint_ignored():
    """Start worker processes with SIGINT ignored (a disposition that survives exec), so that
    a Ctrl-C while they import torch and wait for the probe reaches only this process, which
    stops them, instead of printing a traceback from each; a worker takes SIGINT back once
    the study is ready (``_workers._worker_process``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_arguments(
    *,
    mode,
    n_trials,
    workers,
    weights,
    seed,
    probe_steps,
    strategies,
    lr_range,
    max_instability,
    heartbeat_interval,
) -> None:
    """Refuse a bad argument before anything is stored or trained (one line each)."""

    def whole(name: str, value: Any, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"`{name}` must be an int >= {low}, but got {value!r}")

    if mode not in MODES:
        raise ConfigError(f"`mode` must be one of {MODES}, but got {mode!r}")
    whole("n_trials", n_trials, 1)
    whole("workers", workers, 1)
    if probe_steps is not None:
        whole("probe_steps", probe_steps, 2)
    whole("heartbeat_interval", heartbeat_interval, 1)
    if seed is not None:
        whole("seed", seed, 0)
    if weights is not None:
        try:
            w = [float(x) for x in weights]
        except (TypeError, ValueError):
            w = []
        if len(w) != len(NAMES) or not all(map(math.isfinite, w)) or min(w) < 0 or sum(w) <= 0:
            raise ConfigError(
                f"`weights` must be {len(NAMES)} finite non-negative numbers for {NAMES} with "
                f"a positive sum, but got {weights!r}"
            )
    if strategies is not None:
        if isinstance(strategies, str) or not all(isinstance(x, str) for x in strategies):
            raise ConfigError(f"`strategies` must be a list of names, but got {strategies!r}")
        if not strategies:
            raise ConfigError("`strategies` must name at least one clipper, but got []")
        check_strategies(None, strategies)  # registered, with a searched parameter
    if not (isinstance(lr_range, (int, float)) and math.isfinite(lr_range) and lr_range > 1):
        raise ConfigError(f"`lr_range` must be a finite number > 1, but got {lr_range!r}")
    if not (isinstance(max_instability, (int, float)) and 0 <= max_instability <= 1):
        raise ConfigError(
            f"`max_instability` must be a number in [0, 1], but got {max_instability!r}"
        )


def tune(
    task: Task | str,
    n_trials: int = 9,
    steps: int | None = None,
    *,
    mode: str = "pareto",
    weights: Sequence[float] | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    seed: int | None = 0,
    workers: int = 1,
    probe_steps: int | None = None,
    strategies: Sequence[str] | None = None,
    tune_lr: bool = False,
    lr_range: float = 3.0,
    max_instability: float = 0.05,
    baselines: bool = True,
    fidelity: bool = True,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    progress: Callable[[int, int], None] | None = None,
    resume_anyway: bool = False,
) -> TuneResult:
    """Search clipping configurations for ``task``; see the module docstring.

    Args:
        task: a Task, or a target string for :func:`autoclip.task.load_task` (needed when
            ``workers > 1``, so that each worker process can load it).
        n_trials: trials (configurations) in the study in total, across workers and
            restarts; with ``fidelity`` most of them are pruned at a rung.
        steps: training steps per trial (default ``task.steps``).
        mode: ``"pareto"`` or ``"single"``.
        weights: weights of (final loss, speed, instability) for choosing from the Pareto
            front after normalising each objective over it; default: the knee (the front
            point nearest the ideal point in normalised objective space).
        storage: None, a journal file path, or an Optuna storage URL.
        study_name: default ``autoclip-<task name>``; rerunning with it resumes the study.
        seed: seeds the sampler (worker i uses seed + i); trials train with the task's seed.
        workers: local worker processes (> 1 needs a storage that processes share).
        probe_steps: warm-up steps of the probe that builds the proposal (default: a tenth
            of ``steps``, within [20, 100]).
        strategies: the strategies searched (default: the recommended one alone, its
            first trials a ladder of its threshold; several: the proposal's candidates first,
            e.g. ``proposal.space.strategies`` for all of them).
        tune_lr: also search a learning-rate multiplier in ``[1/lr_range, lr_range]``.
        max_instability: the constraint of ``"single"`` mode.
        baselines: also train no clipping and fixed norm 1.0 for comparison, each for the
            length of the first rung (the whole length without ``fidelity``).
        fidelity: successive halving over trial lengths (see ``autoclip.search._fidelity``);
            False trains every trial for the full length.
        resume_anyway: resume a stored study even though the task's fingerprint (model,
            optimizer, data, code, seed) changed since it was created; by default that is
            refused, naming what changed.

    >>> import torch
    >>> from torch import nn
    >>> import autoclip
    >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    >>> batches = [(x[i : i + 16], x[i : i + 16].sum(1, keepdim=True)) for i in range(0, 64, 16)]
    >>> loss_fn = lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1])
    >>> task = autoclip.Task(lambda: nn.Linear(4, 1), lambda p: torch.optim.SGD(p, lr=0.1),
    ...                      loss_fn, batches, steps=20, name="doc")
    >>> result = tune(task, n_trials=3, probe_steps=5)
    >>> len(result.trials), sorted(result.baselines), result.chosen is not None
    (3, ['fixed norm 1.0', 'no clipping'], True)
    """
    _check_arguments(
        mode=mode,
        n_trials=n_trials,
        workers=workers,
        weights=weights,
        seed=seed,
        probe_steps=probe_steps,
        strategies=strategies,
        lr_range=lr_range,
        max_instability=max_instability,
        heartbeat_interval=heartbeat_interval,
    )
    target = task if isinstance(task, str) else None
    if workers > 1 and (target is None or not isinstance(storage, str)):
        raise ConfigError(
            "workers > 1 needs the task as a target string ('file.py:name' or a study name) "
            "and a storage path or URL, so that every worker process can load both"
        )
    task = load_task(task)
    steps = task.steps if steps is None else steps
    if not (isinstance(steps, int) and steps >= 1):
        raise ConfigError(f"`steps` must be an int >= 1, but got {steps!r}")
    if probe_steps is None:
        probe_steps = min(100, max(20, steps // 10))
    study_name = study_name or f"autoclip-{task.name}"
    fp = fingerprint(task) if storage is not None else None  # before anything is stored
    store = open_storage(storage, heartbeat_interval=heartbeat_interval)

    # Every worker must agree on these; the search space itself comes from the proposal.
    settings = _Settings(
        mode=mode,
        steps=steps,
        strategies=tuple(strategies or ()),
        tune_lr=tune_lr,
        lr_range=lr_range,
        max_instability=max_instability,
        task=task.name,
        fidelity=bool(fidelity),
    )
    _check_compatible(store, study_name, settings, fp, resume_anyway)
    if workers > 1:
        import torch

        torch.set_num_threads(1)
    # The worker processes start now, not after the probe: a fresh Python importing torch and
    # loading the task takes seconds, which then overlap the probe instead of delaying their
    # first trials (each waits for the study to be ready while this process lives).
    ctx = multiprocessing.get_context("spawn")
    share = -(-n_trials // workers)  # each local worker's bracket: its part of the budget
    procs = [
        ctx.Process(
            target=_worker_process,
            args=(target, storage, study_name, n_trials, i, seed, heartbeat_interval, share),
            daemon=True,
        )
        for i in range(1, workers)
    ]
    with _sigint_ignored():  # inherited through exec: a Ctrl-C while they start is ours
        for p in procs:
            p.start()
    try:
        _create_if_absent(store, study_name, task, settings, probe_steps, n_trials, fp)
        study, proposal, settings = _load_study(store, study_name, seed=seed)
    except BaseException:  # a failed probe, Ctrl-C: the waiting workers go too
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
        raise
    # The coordinator watches its workers by their handles: a dead one is reaped, its trial
    # failed and retried (a zombie would pass a check by process id and be waited for).
    watch = LocalWorkers(
        procs, lambda pid, code: _fail_dead(study, study.get_trials(deepcopy=False), dead={pid})
    )
    try:
        _run_worker(
            study,
            store,
            task,
            proposal,
            settings,
            n_trials,
            progress,
            share=share,
            watcher=os.getpid(),
            between_trials=watch.check,
        )
    except KeyboardInterrupt:
        watch.stop(grace=INTERRUPT_GRACE)
        raise
    finally:
        durations = [
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.datetime_start and t.datetime_complete
        ]
        watch.join(wait_limit(durations))  # nothing left to wait for after a Ctrl-C

    attrs = study.user_attrs
    base = attrs.get(ATTR + "baselines", {})
    if baselines and len(base) < 2:
        plan = Plan.make(steps) if settings.fidelity else Plan(steps, ())
        length = plan.rungs[0] if plan.rungs else steps  # no more than one rung
        base = {k: serialize.encode(v) for k, v in _baselines(task, length, base).items()}
        study.set_user_attr(ATTR + "baselines", base)
    return _result(study, storage, n_trials, weights, proposal, settings, base)
