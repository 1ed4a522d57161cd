"""Creating and loading a study: its settings, sampler, pruner and coordinator."""

from __future__ import annotations

import hashlib
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from autoclip.errors import StorageError
from autoclip.objectives import NAMES
from autoclip.propose import MIN_RACE_BUDGET, Proposal, suggest_task
from autoclip.search._fingerprint import describe_changes
from autoclip.search._space import default_strategies, first_trials
from autoclip.search._store import ATTR
from autoclip.search._watch import pid_alive
from autoclip.task import Task

MODES = ("pareto", "single")
_SETTING_UP: set[str] = set()  # studies this process is setting up right now (any thread)


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
    fidelity: bool = True

    def key(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _directions(mode: str) -> list[str]:
    return ["minimize"] * (len(NAMES) if mode == "pareto" else 1)


def _make_sampler(seed: int | None, n_startup: int, worker: int):
    # Each worker gets its own seed, or two workers would propose the same points. Trials
    # report their constraints (diverged; single mode: instability) with set_constraint.
    s = None if seed is None else seed + worker
    return optuna.samplers.TPESampler(seed=s, n_startup_trials=n_startup)


def _id_of(storage, study_name: str) -> int:
    # BaseStorage's public lookup; Optuna's Study and StudySummary keep the id private.
    return storage.get_study_id_from_name(study_name)


def _proposal_of(storage, study_name: str) -> Proposal:
    """The proposal, kept in the study's system attributes: a study-level user attribute
    would make every row of the ``optuna studies`` table tens of kilobytes wide."""
    attrs = storage.get_study_system_attrs(_id_of(storage, study_name))
    return Proposal.from_json(attrs[ATTR + "proposal"])


def _load_study(
    storage,
    study_name: str,
    *,
    worker: int = 0,
    seed: int | None = None,
    wait: float = 600.0,
    coordinator: int | None = None,
    poll: float = 0.5,
):
    """Load an existing study once its coordinator has stored the proposal.

    ``coordinator``: the process id of a local coordinator that starts this worker before it
    creates the study and probes (so that the worker's start-up, a fresh Python importing
    torch, overlaps the probe instead of delaying its first trial): while it lives, the
    worker waits for the study to appear and to be ready, however long the probe takes.
    """
    deadline = time.monotonic() + wait
    while True:
        summary = _summary(storage, study_name)
        if summary is not None and summary.user_attrs.get(ATTR + "ready"):
            break
        if coordinator is not None and pid_alive(coordinator):
            time.sleep(poll)
            continue
        if summary is None:
            raise StorageError(
                f"study {study_name!r} is not in the storage (its coordinator's setup failed "
                "and removed it); rerun the command"
            )
        if time.monotonic() > deadline:
            raise StorageError(
                f"study {study_name!r} exists but its coordinator never finished setting it "
                f"up within {wait:.0f} s; delete it or use another study name"
            )
        time.sleep(poll)
    attrs = summary.user_attrs
    settings = _Settings(
        **{**attrs[ATTR + "settings"], "strategies": tuple(attrs[ATTR + "settings"]["strategies"])}
    )
    proposal = _proposal_of(storage, study_name)
    n_startup = int(attrs.get(ATTR + "enqueued", 0)) + 2  # random until those have run
    seed = _process_seed(seed, attrs.get(ATTR + "coordinator"))
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=_make_sampler(seed, n_startup, worker),
        pruner=optuna.pruners.NopPruner(),  # brackets prune (see _fidelity), in both modes
    )
    return study, proposal, settings


def _summary(storage, study_name: str) -> optuna.study.StudySummary | None:
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if s.study_name == study_name:
            return s
    return None


def _abandoned(user_attrs: dict[str, Any], study_name: str) -> bool:
    """Whether the study's coordinator died on this host before it finished setting it up
    (an interrupted probe), or is this very process, no longer setting it up (a failed
    probe in a notebook, retried): then a rerun may set it up afresh, as no trial ran yet."""
    if user_attrs.get(ATTR + "ready"):
        return False
    who = user_attrs.get(ATTR + "coordinator") or {}
    pid = who.get("pid")
    if who.get("host") != socket.gethostname() or pid is None:
        return False
    if pid == os.getpid():
        return study_name not in _SETTING_UP
    return not pid_alive(pid)


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


def _check_compatible(
    storage,
    study_name: str,
    settings: _Settings,
    fingerprint: dict[str, Any] | None = None,
    resume_anyway: bool = False,
    wait: float = 600.0,
) -> None:
    """Refuse a study created with other settings, or for a task that has changed since
    (unless ``resume_anyway``); wait, up to ``wait`` s, while its coordinator probes."""
    start = time.monotonic()
    while True:
        summary = _summary(storage, study_name)
        if summary is None or _abandoned(summary.user_attrs, study_name):
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
    stored_fp = summary.user_attrs.get(ATTR + "fingerprint")
    if fingerprint is None or stored_fp is None or resume_anyway:
        return  # a study from an autoclip that kept no fingerprint: nothing to compare
    changes = describe_changes(stored_fp, fingerprint)
    if changes:
        raise StorageError(
            f"study {study_name!r} was created for a different task ({'; '.join(changes)}); "
            "start a new study with another --study name, or pass --resume-anyway "
            "(tune(resume_anyway=True)) to continue this one with the changed task"
        )


def _create_if_absent(
    store,
    study_name: str,
    task: Task,
    settings: _Settings,
    probe_steps: int,
    n_trials: int,
    fingerprint: dict[str, Any] | None = None,
) -> None:
    """Create the study, probe, store the proposal and enqueue the candidates, once."""
    for _ in range(3):
        try:
            study = optuna.create_study(
                storage=store, study_name=study_name, directions=_directions(settings.mode)
            )
            break
        except optuna.exceptions.DuplicatedStudyError:
            try:  # by id: a study another rerun has just recreated stays
                study_id = _id_of(store, study_name)
                if not _abandoned(store.get_study_user_attrs(study_id), study_name):
                    return  # another process is (or was) the coordinator
                store.delete_study(study_id)
            except KeyError:
                pass  # another rerun deleted it first
    else:
        return
    _SETTING_UP.add(study_name)
    try:
        coordinator = {"host": socket.gethostname(), "pid": os.getpid()}
        study.set_user_attr(ATTR + "coordinator", coordinator)
        if fingerprint is not None:
            study.set_user_attr(ATTR + "fingerprint", fingerprint)
        # The measured suggestion (warm-up + races of thresholds), within 2/5 of a trial's
        # length so that probe, measurement, baselines and the bracket stay within a quarter
        # of a grid.
        budget = max(probe_steps + MIN_RACE_BUDGET, (2 * settings.steps) // 5)
        proposal = suggest_task(task, steps=probe_steps, budget=budget)
        strategies = settings.strategies or default_strategies(proposal)
        stored = {**settings.key(), "strategies": list(strategies)}
        study.set_user_attr(ATTR + "settings", stored)
        study_id = _id_of(store, study_name)
        store.set_study_system_attr(study_id, ATTR + "proposal", proposal.to_json())
        spent = proposal.steps_spent  # warm-up and measurement
        study.set_user_attr(ATTR + "probe_steps", int(spent))
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(NAMES) if settings.mode == "pareto" else [NAMES[0]])
        # No more than the budget: a candidate left waiting would hold a slot that a retried
        # trial needs.
        first = first_trials(proposal, strategies, n_trials)
        for params in first:
            study.enqueue_trial(params)
        study.set_user_attr(ATTR + "enqueued", len(first))
        study.set_user_attr(ATTR + "ready", True)
    except BaseException:
        # A failed probe (or Ctrl-C) leaves no half-made study behind: no trial ran yet, and
        # a retry, in this process or another, sets it up afresh instead of waiting for it.
        _delete(store, study_name)
        raise
    finally:
        _SETTING_UP.discard(study_name)


def _delete(store, study_name: str) -> None:
    """Delete a study that is not ready (no trial ran), if it is still there."""
    try:
        store.delete_study(_id_of(store, study_name))
    except Exception:  # another rerun deleted it first, or the storage cannot be written
        pass
