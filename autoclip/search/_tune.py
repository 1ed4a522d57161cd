"""``tune(task)``: probe, search, baselines, result."""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any

import optuna

from autoclip import serialize
from autoclip.errors import ConfigError, StorageError
from autoclip.objectives import NAMES, evaluate
from autoclip.search._fidelity import Plan
from autoclip.search._result import TrialRecord, TuneResult, _result
from autoclip.search._space import check_strategies
from autoclip.search._storage import ATTR, HEARTBEAT_INTERVAL, open_storage
from autoclip.search._study import (
    MODES,
    _check_compatible,
    _create_if_absent,
    _load_study,
    _Settings,
)
from autoclip.search._workers import _run_worker, _worker_process
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


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_args(seed, probe_steps, strategies, lr_range, max_instability) -> None:
    """The arguments nothing else checks before the probe runs: each a one-line ConfigError."""
    if seed is not None and not (_is_int(seed) and seed >= 0):
        raise ConfigError(f"`seed` must be an int >= 0 or None, but got {seed!r}")
    if probe_steps is not None and not (_is_int(probe_steps) and probe_steps >= 2):
        raise ConfigError(f"`probe_steps` must be an int >= 2 or None, but got {probe_steps!r}")
    if strategies is not None:
        check_strategies(None, strategies)
    if not (_is_number(lr_range) and lr_range > 1):
        raise ConfigError(
            f"`lr_range` must be a finite number > 1 (the lr multiplier is searched in "
            f"[1/lr_range, lr_range]), but got {lr_range!r}"
        )
    if not (_is_number(max_instability) and 0 <= max_instability <= 1):
        raise ConfigError(
            f"`max_instability` must be a number in [0, 1] (a fraction of loss spikes), "
            f"but got {max_instability!r}"
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
        strategies: restrict the strategies searched (default: the proposal's).
        tune_lr: also search a learning-rate multiplier in ``[1/lr_range, lr_range]``.
        max_instability: the constraint of ``"single"`` mode.
        baselines: also train no clipping and fixed norm 1.0 for comparison, each for the
            length of the first rung (the whole length without ``fidelity``).
        fidelity: successive halving over trial lengths (see ``autoclip.search._fidelity``);
            False trains every trial for the full length.

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
    if mode not in MODES:
        raise ConfigError(f"`mode` must be one of {MODES}, but got {mode!r}")
    if not (isinstance(n_trials, int) and n_trials >= 1):
        raise ConfigError(f"`n_trials` must be an int >= 1, but got {n_trials!r}")
    if not (isinstance(workers, int) and workers >= 1):
        raise ConfigError(f"`workers` must be an int >= 1, but got {workers!r}")
    if weights is not None and (
        len(weights) != len(NAMES) or any(w < 0 for w in weights) or sum(weights) <= 0
    ):
        raise ConfigError(
            f"`weights` must be {len(NAMES)} non-negative numbers for {NAMES} with a "
            f"positive sum, but got {weights!r}"
        )
    _check_args(seed, probe_steps, strategies, lr_range, max_instability)
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
    _check_compatible(store, study_name, settings)
    _create_if_absent(store, study_name, task, settings, probe_steps, n_trials)
    study, proposal, settings = _load_study(store, study_name, seed=seed)

    if workers > 1:
        import torch

        torch.set_num_threads(1)
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
    for p in procs:
        p.start()
    try:
        _run_worker(study, store, task, proposal, settings, n_trials, progress, share=share)
    finally:
        for p in procs:
            p.join()
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        raise StorageError(f"{len(bad)} worker process(es) failed (exit codes {bad})")

    attrs = study.user_attrs
    base = attrs.get(ATTR + "baselines", {})
    if baselines and len(base) < 2:
        plan = Plan.make(steps) if settings.fidelity else Plan(steps, ())
        length = plan.rungs[0] if plan.rungs else steps  # no more than one rung
        base = {k: serialize.encode(v) for k, v in _baselines(task, length, base).items()}
        study.set_user_attr(ATTR + "baselines", base)
    return _result(study, storage, n_trials, weights, proposal, settings, base)
