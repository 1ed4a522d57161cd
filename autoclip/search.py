"""Optuna search over clipping configurations.

``tune(task)`` probes the task, turns the proposal into a search space (the strategy as a
categorical, each strategy's threshold as a conditional parameter, optionally the learning
rate), enqueues the proposal's candidates first, and runs an Optuna study whose trials each
train the task from scratch with one clipper. ``suggest_clipper(trial, proposal)`` is the same
sampling step, for users who run their own study.

Modes:

* ``"pareto"``: minimise (final loss, convergence speed, instability) jointly with
  multi-objective TPE. Optuna does not prune multi-objective studies, so a diverging trial
  ends early by itself (``training.train`` stops at divergence) and scores as a diverged run.
* ``"single"``: minimise the final loss with a median pruner, subject to
  ``instability <= max_instability`` (TPE's constraints).

Storage and workers: ``storage=None`` keeps the study in memory; a file path uses Optuna's
journal file (safe for several processes on one machine); a URL (``postgresql://``,
``sqlite://``...) uses Optuna's RDB storage with heartbeats, so the trial of a worker that died
is marked failed and retried with the same parameters. The first process to create a study is
its coordinator: it probes, stores the proposal in the study and enqueues the candidates once;
every other process (``workers=N`` locally, or the same command on other machines) loads them
from the study. Trials count towards ``n_trials`` across all workers and restarts; a trial
started beyond the budget by a race is stopped at once and marked ``surplus``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import FrozenTrial, TrialState

from autoclip.clippers import BaseClipper, create_clipper
from autoclip.errors import ConfigError, StorageError
from autoclip.objectives import NAMES, evaluate
from autoclip.probe import probe_task
from autoclip.propose import Proposal, propose
from autoclip.stats import compute_stats
from autoclip.task import Task, load_task
from autoclip.training import TrainLog, train

__all__ = [
    "TrialRecord",
    "TuneResult",
    "load_result",
    "open_storage",
    "suggest_clipper",
    "tune",
]

MODES = ("pareto", "single")
PREFIX = "clip"
# Heartbeat every 10 s; a trial silent for 3 intervals belongs to a dead worker.
HEARTBEAT_INTERVAL = 10
MAX_RETRY = 2  # a trial that kills its worker twice is not tried a third time
ATTR = "autoclip."  # prefix of the study/trial attributes autoclip owns

_SEARCHED = {  # strategy -> (parameter, SearchSpace field, log scale)
    "norm": ("max_norm", "norm", True),
    "value": ("clip_value", "value", True),
    "quantile": ("quantile", "quantile", False),
    "zscore": ("z_thresh", "z_thresh", False),
    "agc": ("clipping", "agc", True),
}


# -- the search space ------------------------------------------------------------------------
def _candidate_params(proposal: Proposal, strategy: str) -> dict[str, Any]:
    for c in proposal.candidates:
        if c.strategy == strategy:
            return dict(c.params)
    return {}


def _range(proposal: Proposal, strategy: str) -> tuple[float, float]:
    low, high = getattr(proposal.space, _SEARCHED[strategy][1])
    return float(low), float(high)


def suggest_clipper(
    trial: optuna.Trial,
    proposal: Proposal,
    *,
    strategies: Sequence[str] | None = None,
    prefix: str = PREFIX,
) -> BaseClipper:
    """Sample a clipping configuration inside an Optuna objective and return the clipper.

    Parameters are named ``{prefix}.strategy`` and ``{prefix}.{strategy}.{param}``, with the
    ranges of ``proposal.space``; adaptive clippers come warm-started from the probe's norms.
    """
    strategies = tuple(strategies or proposal.space.strategies)
    unknown = [s for s in strategies if s not in _SEARCHED]
    if unknown:
        raise ConfigError(f"cannot search strategies {unknown}; choose from {sorted(_SEARCHED)}")
    strategy = trial.suggest_categorical(f"{prefix}.strategy", list(strategies))
    param, _, log = _SEARCHED[strategy]
    params = _candidate_params(proposal, strategy)
    low, high = _range(proposal, strategy)
    params[param] = trial.suggest_float(f"{prefix}.{strategy}.{param}", low, high, log=log)
    return create_clipper(strategy, **params).warm_start(proposal.warm_norms)


def _enqueue_params(proposal: Proposal, strategies: Sequence[str], prefix: str = PREFIX):
    """Trial parameters for each proposal candidate that the space can express."""
    out = []
    for c in proposal.candidates:
        if c.strategy not in strategies or c.strategy not in _SEARCHED:
            continue
        param = _SEARCHED[c.strategy][0]
        low, high = _range(proposal, c.strategy)
        value = float(np.clip(c.params[param], low, high))
        out.append({f"{prefix}.strategy": c.strategy, f"{prefix}.{c.strategy}.{param}": value})
    return out


# -- storage ---------------------------------------------------------------------------------
def open_storage(
    storage: str | optuna.storages.BaseStorage | None,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
) -> optuna.storages.BaseStorage:
    """Open ``storage``: None (in memory), a journal file path, or an Optuna RDB URL."""
    if storage is None:
        return optuna.storages.InMemoryStorage()
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if not isinstance(storage, str) or not storage:
        raise StorageError(f"storage must be a file path or a URL, but got {storage!r}")
    if "://" in storage:
        url, engine_kwargs = _with_driver(storage), {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}  # not minutes on a bad host
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=3 * heartbeat_interval,
                    **{_RETRY_KWARG: _RetryStale(max_retry=MAX_RETRY)},
                )
        except ImportError as exc:
            raise StorageError(
                f"storage {_redact(storage)} needs a database driver that is not installed "
                f"({exc}); for PostgreSQL: pip install 'autoclip-tuner[postgres]'"
            ) from None
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StorageError(
                f"cannot open storage {_redact(storage)}: {first}; check the host, port, "
                "database name and credentials"
            ) from None
    from autoclip._search_journal import JournalFile

    return optuna.storages.JournalStorage(JournalFile(storage))


class _FlockLock:
    """The journal file's write lock, held with flock(2) on ``<path>.flock``.

    The kernel drops the lock when its process dies, so a worker killed while writing does
    not hold up the others; Optuna's lock files are broken only after a 30 s grace period.
    Journal files are for one machine (local disks), where flock is reliable.
    """

    available = importlib.util.find_spec("fcntl") is not None  # POSIX; else Optuna's lock

    def __init__(self, path: str) -> None:
        self._path = path + ".flock"
        self._thread_lock = threading.Lock()  # flock excludes processes, this threads
        self._fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        self._thread_lock.acquire()
        fd = -1
        try:
            fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            self._thread_lock.release()
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        import fcntl

        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        finally:
            self._thread_lock.release()


def _with_driver(url: str) -> str:
    """A bare ``postgresql://`` URL pinned to the PostgreSQL driver that is installed.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3 and earlier versions as
    psycopg2; autoclip works with either, so it names the one that can be imported.
    """
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):  # "postgres://" as Heroku and others write it
        return url
    for module in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{module}://{rest}"
    return url  # opening it raises the ImportError that names the extra to install


# Optuna 4.9 renamed the stale-trial callback; accept the older name too.
if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
    _RetryBase, _RETRY_KWARG = (
        optuna.storages.RetryHeartbeatStaleTrialCallback,
        "heartbeat_stale_trial_callback",
    )
else:  # pragma: no cover - optuna < 4.9
    _RetryBase, _RETRY_KWARG = RetryFailedTrialCallback, "failed_trial_callback"


class _RetryStale(_RetryBase):
    """Re-enqueue a trial whose heartbeat went stale, with the same parameters.

    Optuna's callback copies the dead trial's user attributes into the retry; autoclip's
    describe the dead attempt (its pid and host, partial results), and a retry carrying a dead
    pid would look dead to the same-host check in ``_fail_dead`` while it starts. The retry
    keeps the user's attributes and gets ``retry_of`` instead.
    """

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.copy(trial)
        kept = {k: v for k, v in trial.user_attrs.items() if not k.startswith(ATTR)}
        trial.user_attrs = {**kept, ATTR + "retry_of": trial.number}
        super().__call__(study, trial)


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        rest = f"{user}:***@{rest.split('@', 1)[1]}"
    return f"{scheme}{sep}{rest}"


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialRecord:
    """One trial (or baseline run) as the report shows it."""

    number: int
    state: str
    config: dict[str, Any] | None
    lr_scale: float = 1.0
    values: tuple[float, float, float] | None = None
    diverged: bool = False
    reason: str | None = None
    clipped_fraction: float | None = None
    steps_run: int = 0
    retry_of: int | None = None

    @property
    def label(self) -> str:
        """Short human description of the clipping configuration."""
        return describe_config(self.config) + (
            f", lr x{self.lr_scale:.3g}" if self.lr_scale != 1.0 else ""
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialRecord:
        d = dict(d)
        if d.get("values") is not None:
            d["values"] = tuple(d["values"])
        return cls(**d)


def describe_config(config: dict[str, Any] | None) -> str:
    if config is None:
        return "no clipping"
    name = config["name"]
    key = _SEARCHED.get(name, (None,))[0]
    return f"{name}({key}={config[key]:.4g})" if key in config else name


@dataclass(frozen=True)
class TuneResult:
    """What a search found.

    Attributes:
        chosen: the configuration autoclip recommends, chosen from ``pareto`` by ``rule``.
        rule: how it was chosen, in words.
        pareto: non-dominated trials over (final loss, speed, instability).
        baselines: reference runs (no clipping, fixed norm 1.0), same steps and seed.
        trials: every trial of the study, failed and surplus ones included.
        train_steps: optimizer steps spent (probe + trials + baselines).
    """

    study_name: str
    mode: str
    chosen: TrialRecord
    rule: str
    pareto: tuple[TrialRecord, ...]
    baselines: dict[str, TrialRecord]
    trials: tuple[TrialRecord, ...]
    proposal: Proposal
    train_steps: int
    n_trials: int
    storage: str | None = None
    objective_names: tuple[str, ...] = field(default=NAMES)

    @property
    def best_config(self) -> dict[str, Any]:
        return dict(self.chosen.config or {})

    def clipper(self) -> BaseClipper:
        """The chosen clipper, warm-started from the probe's norms, ready to ``attach``."""
        return create_clipper(**self.best_config).warm_start(self.proposal.warm_norms)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["proposal"] = self.proposal.to_dict()
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TuneResult:
        d = dict(d)
        d["chosen"] = TrialRecord.from_dict(d["chosen"])
        d["pareto"] = tuple(TrialRecord.from_dict(t) for t in d["pareto"])
        d["trials"] = tuple(TrialRecord.from_dict(t) for t in d["trials"])
        d["baselines"] = {k: TrialRecord.from_dict(v) for k, v in d["baselines"].items()}
        d["proposal"] = Proposal.from_dict(d["proposal"])
        d["objective_names"] = tuple(d.get("objective_names", NAMES))
        return cls(**d)


# -- settings stored in the study ------------------------------------------------------------
@dataclass(frozen=True)
class _Settings:
    """What every worker must agree on; stored in the study by its coordinator."""

    mode: str
    steps: int
    strategies: tuple[str, ...]
    tune_lr: bool
    lr_range: float
    max_instability: float
    task: str

    def key(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _directions(mode: str) -> list[str]:
    return ["minimize"] * (len(NAMES) if mode == "pareto" else 1)


def _make_sampler(mode: str, seed: int | None, n_startup: int, worker: int):
    # Each worker gets its own seed, or two workers would propose the same points.
    s = None if seed is None else seed + worker
    kw: dict[str, Any] = {"seed": s, "n_startup_trials": n_startup}
    if mode == "single" and not _HAS_SET_CONSTRAINT:  # optuna < 5: the old hook
        kw["constraints_func"] = _constraints
    return optuna.samplers.TPESampler(**kw)


_HAS_SET_CONSTRAINT = hasattr(optuna.Trial, "set_constraint")


def _constraints(trial: FrozenTrial) -> Sequence[float]:
    return trial.user_attrs.get(ATTR + "constraint", [0.0])


def _make_pruner(mode: str, steps: int):
    if mode == "pareto":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, steps // 5))


# -- budget accounting -----------------------------------------------------------------------
def _retry_of(t: FrozenTrial) -> int | None:
    own = t.user_attrs.get(ATTR + "retry_of")
    if own is not None:
        return own
    # Optuna's own record: the whole chain, oldest first; the parent is the last entry.
    history = t.system_attrs.get("retry_history") or []
    return history[-1] if history else None


def _excluded(trials: Sequence[FrozenTrial]) -> set[int]:
    """Trials that do not count towards n_trials: surplus ones, and failures that were retried."""
    out = {t.number for t in trials if t.user_attrs.get(ATTR + "surplus")}
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


# -- dead workers on one host (storages without heartbeats) ----------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fail_dead(study: optuna.Study) -> None:
    """Fail and retry trials whose worker died: by heartbeat where the storage has them, and
    by process id for workers on this host (journal files have no heartbeat)."""
    storage = study._storage
    # Unconditionally: Optuna wraps an RDBStorage in a cache, so an isinstance check never
    # matched, and a worker waiting on a dead worker's trial waited forever. Storages without
    # heartbeats make this a no-op.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False)
    parent = {t.number: _retry_of(t) for t in trials}
    for t in trials:
        if t.state != TrialState.RUNNING or t.user_attrs.get(ATTR + "host") != host:
            continue
        pid = t.user_attrs.get(ATTR + "pid")
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            ok = storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except Exception:  # another process got there first
            ok = False
        _, retries = _lineage(parent, t.number)  # how often these parameters were retried
        if ok is not False and retries < MAX_RETRY:  # the heartbeat path's limit, too
            study.enqueue_trial(t.params, user_attrs={ATTR + "retry_of": t.number})


# -- one trial -------------------------------------------------------------------------------
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


def _record(t: FrozenTrial) -> TrialRecord:
    ua = t.user_attrs
    values = ua.get(ATTR + "objectives")
    reason = ua.get(ATTR + "reason") or t.system_attrs.get("fail_reason")
    if ua.get(ATTR + "surplus"):
        reason = "surplus: started beyond the trial budget"
    return TrialRecord(
        number=t.number,
        state=t.state.name,
        config=ua.get(ATTR + "config"),
        lr_scale=float(t.params.get("lr_scale", 1.0)),
        values=None if values is None else tuple(values),
        diverged=bool(ua.get(ATTR + "diverged", False)),
        reason=reason,
        clipped_fraction=ua.get(ATTR + "clipped_fraction"),
        steps_run=int(ua.get(ATTR + "steps_run", 0)),
        retry_of=_retry_of(t),
    )


# -- workers ---------------------------------------------------------------------------------
def _run_worker(
    study: optuna.Study,
    task: Task,
    proposal: Proposal,
    settings: _Settings,
    n_trials: int,
    progress: Callable[[int, int], None] | None = None,
    poll: float = 1.0,
) -> None:
    """Run trials until the study holds ``n_trials`` counted, finished trials."""

    interrupted: list[optuna.Trial] = []

    def objective(trial: optuna.Trial):
        try:
            return _objective(trial, task, proposal, settings, n_trials)
        except KeyboardInterrupt:
            trial.set_user_attr(ATTR + "reason", "interrupted (KeyboardInterrupt)")
            interrupted.append(trial)
            raise
        except optuna.TrialPruned as exc:
            trial.set_user_attr(ATTR + "reason", str(exc) or "pruned")
            raise
        except Exception as exc:  # the trial fails, the study goes on: keep why
            trial.set_user_attr(ATTR + "reason", f"{type(exc).__name__}: {exc}")
            raise

    while True:
        _fail_dead(study)
        trials = study.get_trials(deepcopy=False)
        counted = _counted(trials)
        waiting = any(t.state == TrialState.WAITING for t in counted)
        running = any(t.state == TrialState.RUNNING for t in counted)
        if progress is not None:
            progress(sum(t.state.is_finished() for t in counted), n_trials)
        if waiting or len(counted) < n_trials:
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
            time.sleep(poll)  # wait for other workers' last trials (or for them to go stale)
        else:
            return


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
    _run_worker(study, task, proposal, settings, n_trials)


# -- study creation --------------------------------------------------------------------------
def _load_study(
    storage, study_name: str, *, worker: int = 0, seed: int | None = None, wait: float = 600.0
):
    """Load an existing study once its coordinator has stored the proposal."""
    deadline = time.monotonic() + wait
    while True:
        summary = _summary(storage, study_name)
        if summary is not None and summary.user_attrs.get(ATTR + "ready"):
            break
        if time.monotonic() > deadline:
            raise StorageError(
                f"study {study_name!r} exists but its coordinator never finished setting it "
                "up; delete it or use another study name"
            )
        time.sleep(0.5)
    attrs = summary.user_attrs
    settings = _Settings(
        **{**attrs[ATTR + "settings"], "strategies": tuple(attrs[ATTR + "settings"]["strategies"])}
    )
    proposal = Proposal.from_json(attrs[ATTR + "proposal"])
    n_startup = len(_enqueue_params(proposal, settings.strategies)) + 2
    seed = _process_seed(seed, attrs.get(ATTR + "coordinator"))
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=_make_sampler(settings.mode, seed, n_startup, worker),
        pruner=_make_pruner(settings.mode, settings.steps),
    )
    return study, proposal, settings


def _summary(storage, study_name: str) -> optuna.study.StudySummary | None:
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if s.study_name == study_name:
            return s
    return None


def _abandoned(summary: optuna.study.StudySummary) -> bool:
    """Whether the study's coordinator died on this host before it finished setting it up
    (an interrupted probe): then a rerun may set it up afresh, as no trial ran yet."""
    if summary.user_attrs.get(ATTR + "ready"):
        return False
    who = summary.user_attrs.get(ATTR + "coordinator") or {}
    pid = who.get("pid")
    return (
        who.get("host") == socket.gethostname()
        and pid is not None
        and pid != os.getpid()
        and not _pid_alive(pid)
    )


def _process_seed(seed: int | None, coordinator: dict[str, Any] | None) -> int | None:
    """``seed`` for the coordinator and its worker processes; a seed of its own for any other
    process (another machine, a rerun), which runs the same command with the same ``--seed``
    and would otherwise sample exactly the points the coordinator's workers sample."""
    if seed is None or not coordinator:
        return seed
    host = socket.gethostname()
    if coordinator.get("host") == host and coordinator.get("pid") in (os.getpid(), os.getppid()):
        return seed
    digest = hashlib.sha256(f"{seed}/{host}/{os.getpid()}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _check_compatible(storage, study_name: str, settings: _Settings, wait: float = 600.0) -> None:
    """Refuse a study created with other settings; wait while its coordinator probes."""
    start = time.monotonic()
    while True:
        summary = _summary(storage, study_name)
        if summary is None or _abandoned(summary):
            return  # _create_if_absent sets it up
        stored = summary.user_attrs.get(ATTR + "settings")
        if stored is not None:
            break
        # The coordinator marks the study right after creating it; allow it a moment.
        if ATTR + "coordinator" not in summary.user_attrs and time.monotonic() - start > 3.0:
            raise StorageError(
                f"study {study_name!r} exists but was not created by autoclip; "
                "choose another study name"
            )
        if time.monotonic() - start > wait:
            who = summary.user_attrs.get(ATTR + "coordinator", {})
            raise StorageError(
                f"study {study_name!r} is still being set up by its coordinator (pid "
                f"{who.get('pid')} on {who.get('host')}) after {wait:.0f} s; if that process "
                "is gone, rerun on that host, or delete the study or use another study name"
            )
        time.sleep(0.5)
    mine = settings.key()
    if not settings.strategies:  # "the proposal's strategies": whatever was stored
        mine.pop("strategies")
    diff = {k: (stored.get(k), v) for k, v in mine.items() if stored.get(k) != v}
    if diff:
        what = ", ".join(f"{k}: stored {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise StorageError(
            f"study {study_name!r} was created with a different search ({what}); "
            "rerun with the same options or choose another study name"
        )


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


def tune(
    task: Task | str,
    n_trials: int = 20,
    steps: int | None = None,
    *,
    mode: str = "pareto",
    weights: Sequence[float] | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    seed: int | None = 0,
    workers: int = 1,
    probe_steps: int = 100,
    strategies: Sequence[str] | None = None,
    tune_lr: bool = False,
    lr_range: float = 3.0,
    max_instability: float = 0.05,
    baselines: bool = True,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    progress: Callable[[int, int], None] | None = None,
) -> TuneResult:
    """Search clipping configurations for ``task``; see the module docstring.

    Args:
        task: a Task, or a target string for :func:`autoclip.task.load_task` (needed when
            ``workers > 1``, so that each worker process can load it).
        n_trials: trials in the study in total, across workers and restarts.
        steps: training steps per trial (default ``task.steps``).
        mode: ``"pareto"`` or ``"single"``.
        weights: weights of (final loss, speed, instability) for choosing from the Pareto
            front after normalising each objective over it; default: the knee (the front
            point nearest the ideal point in normalised objective space).
        storage: None, a journal file path, or an Optuna storage URL.
        study_name: default ``autoclip-<task name>``; rerunning with it resumes the study.
        seed: seeds the sampler (worker i uses seed + i); trials train with the task's seed.
        workers: local worker processes (> 1 needs a storage that processes share).
        probe_steps: warm-up steps of the probe that builds the proposal.
        strategies: restrict the strategies searched (default: the proposal's).
        tune_lr: also search a learning-rate multiplier in ``[1/lr_range, lr_range]``.
        max_instability: the constraint of ``"single"`` mode.
        baselines: also train no clipping and fixed norm 1.0 for comparison.
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
    )
    _check_compatible(store, study_name, settings)
    _create_if_absent(store, study_name, task, settings, probe_steps, n_trials)
    study, proposal, settings = _load_study(store, study_name, seed=seed)

    if workers > 1:
        import torch

        torch.set_num_threads(1)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker_process,
            args=(target, storage, study_name, n_trials, i, seed, heartbeat_interval),
            daemon=True,
        )
        for i in range(1, workers)
    ]
    for p in procs:
        p.start()
    try:
        _run_worker(study, task, proposal, settings, n_trials, progress)
    finally:
        for p in procs:
            p.join()
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        raise StorageError(f"{len(bad)} worker process(es) failed (exit codes {bad})")

    attrs = study.user_attrs
    base = attrs.get(ATTR + "baselines", {})
    if baselines and len(base) < 2:
        base = {k: asdict(v) for k, v in _baselines(task, steps, base).items()}
        study.set_user_attr(ATTR + "baselines", base)
    return _result(study, storage, n_trials, weights, proposal, settings, base)


def _create_if_absent(
    store, study_name: str, task: Task, settings: _Settings, probe_steps: int, n_trials: int
) -> None:
    """Create the study, probe, store the proposal and enqueue the candidates, once."""
    for _ in range(3):
        try:
            study = optuna.create_study(
                storage=store, study_name=study_name, directions=_directions(settings.mode)
            )
            break
        except optuna.exceptions.DuplicatedStudyError:
            summary = _summary(store, study_name)
            if summary is not None and not _abandoned(summary):
                return  # another process is (or was) the coordinator
            if summary is not None:
                try:  # by id: a study another rerun has just recreated stays
                    store.delete_study(summary._study_id)
                except KeyError:
                    pass  # another rerun deleted it first
    else:
        return
    study.set_user_attr(ATTR + "coordinator", {"host": socket.gethostname(), "pid": os.getpid()})
    trace = probe_task(task, steps=probe_steps)
    proposal = propose(compute_stats(trace))
    strategies = settings.strategies or proposal.space.strategies
    stored = {**settings.key(), "strategies": list(strategies)}
    study.set_user_attr(ATTR + "settings", stored)
    study.set_user_attr(ATTR + "proposal", proposal.to_json())
    study.set_user_attr(ATTR + "probe_steps", len(trace.norms))
    # No more than the budget: a candidate left waiting would hold a slot that a retried
    # trial needs.
    for params in _enqueue_params(proposal, strategies)[:n_trials]:
        study.enqueue_trial(params)
    study.set_user_attr(ATTR + "ready", True)


# -- choosing --------------------------------------------------------------------------------
def pareto_front(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The records no other record dominates (all objectives <=, one <)."""
    pts = [r for r in records if r.values is not None and all(map(math.isfinite, r.values))]
    front = []
    for r in pts:
        a = np.asarray(r.values)
        dominated = any(
            np.all(np.asarray(o.values) <= a) and np.any(np.asarray(o.values) < a)
            for o in pts
            if o is not r
        )
        if not dominated:
            front.append(r)
    return front


def choose(
    front: Sequence[TrialRecord], weights: Sequence[float] | None
) -> tuple[TrialRecord, str]:
    """Pick one record from a Pareto front: by weights, or the knee."""
    vals = np.asarray([r.values for r in front], dtype=float)
    lo, hi = vals.min(axis=0), vals.max(axis=0)
    norm = (vals - lo) / np.where(hi > lo, hi - lo, 1.0)
    if weights is not None:
        w = np.asarray(weights, dtype=float)
        i = int(np.argmin(norm @ w))
        rule = (
            f"lowest weighted sum of the objectives normalised over the Pareto front "
            f"(weights {dict(zip(NAMES, map(float, w), strict=True))})"
        )
    else:
        i = int(np.argmin(np.linalg.norm(norm, axis=1)))
        rule = (
            "knee of the Pareto front: the point nearest the ideal point once each "
            "objective is scaled to [0, 1] over the front"
        )
    return front[i], rule


def _result(study, storage, n_trials, weights, proposal, settings, base) -> TuneResult:
    trials = [_record(t) for t in study.get_trials(deepcopy=False)]
    done = [r for r in trials if r.state == "COMPLETE" and r.values is not None]
    if not done:
        reasons = sorted({r.reason for r in trials if r.reason})
        raise StorageError(
            f"no trial of study {study.study_name!r} completed"
            + (f"; reasons: {reasons[:3]}" if reasons else "")
        )
    front = pareto_front([r for r in done if not r.diverged]) or pareto_front(done)
    if settings.mode == "single":
        ok = [r for r in done if not r.diverged and r.values[2] <= settings.max_instability]
        pool = ok or done
        chosen = min(pool, key=lambda r: r.values[0])
        rule = (
            f"lowest final loss among trials with instability <= {settings.max_instability}"
            if ok
            else "lowest final loss (no trial met the instability constraint)"
        )
    else:
        chosen, rule = choose(front, weights)
    baselines = {k: TrialRecord.from_dict(v) for k, v in base.items()}
    probe_steps = int(study.user_attrs.get(ATTR + "probe_steps", 0))
    spent = (
        probe_steps
        + sum(r.steps_run for r in trials)
        + sum(b.steps_run for b in baselines.values())
    )
    return TuneResult(
        study_name=study.study_name,
        mode=settings.mode,
        chosen=chosen,
        rule=rule,
        pareto=tuple(sorted(front, key=lambda r: r.values)),
        baselines=baselines,
        trials=tuple(trials),
        proposal=proposal,
        train_steps=spent,
        n_trials=n_trials,
        storage=_redact(storage) if isinstance(storage, str) else None,
    )


def load_result(
    storage: str | optuna.storages.BaseStorage,
    study_name: str | None = None,
    *,
    weights: Sequence[float] | None = None,
) -> TuneResult:
    """Summarise an existing study from its storage (the study's only one if no name)."""
    store = open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(store)]
    if study_name is None:
        if len(names) != 1:
            raise StorageError(
                f"storage holds {len(names)} studies {names}; name one with study_name"
            )
        study_name = names[0]
    if study_name not in names:
        raise StorageError(f"no study named {study_name!r} in the storage; it has {names}")
    study, proposal, settings = _load_study(store, study_name, wait=0.0)
    counted = [t for t in _counted(study.get_trials(deepcopy=False)) if t.state.is_finished()]
    base = study.user_attrs.get(ATTR + "baselines", {})
    return _result(study, storage, len(counted), weights, proposal, settings, base)
