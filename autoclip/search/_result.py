"""What a search found: trial records, the Pareto front, the choice, the result."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from autoclip.clippers import BaseClipper, create_clipper
from autoclip.errors import StorageError
from autoclip.objectives import NAMES
from autoclip.propose import Proposal
from autoclip.search._budget import _counted, _retry_of
from autoclip.search._redact import redact_url
from autoclip.search._space import describe_config
from autoclip.search._storage import ATTR, open_storage
from autoclip.search._study import _load_study


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
        storage=redact_url(storage) if isinstance(storage, str) else None,
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
