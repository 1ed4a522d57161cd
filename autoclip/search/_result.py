"""What a search found: trial records, the Pareto front, the choice, the result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from autoclip import serialize
from autoclip.clippers import BaseClipper, create_clipper
from autoclip.errors import ConfigError, StorageError
from autoclip.objectives import NAMES
from autoclip.propose import Proposal
from autoclip.search._budget import _counted, _retry_of
from autoclip.search._fidelity import Plan
from autoclip.search._redact import redact_url
from autoclip.search._space import describe_config
from autoclip.search._store import ATTR, open_storage
from autoclip.search._study import _load_study


@dataclass(frozen=True)
class TrialRecord:
    """One trial (or baseline run) as the report shows it.

    >>> TrialRecord(number=0, state="COMPLETE", config={"name": "norm", "max_norm": 0.5}).label
    'norm(max_norm=0.5)'
    """

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
    rungs: tuple[tuple[int, float, float], ...] = ()  # (step, loss, level) at each rung

    @property
    def label(self) -> str:
        """Short human description of the clipping configuration."""
        return describe_config(self.config) + (
            f", lr x{self.lr_scale:.3g}" if self.lr_scale != 1.0 else ""
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialRecord:
        return serialize.from_plain(cls, d)


@dataclass(frozen=True)
class TuneResult(serialize.Serializable):
    """What a search found.

    Attributes:
        chosen: the configuration autoclip recommends, chosen from ``pareto`` by ``rule``
            among full-length trials that did not diverge; None when every trial diverged
            (then ``warning`` says so).
        rule: how it was chosen, in words.
        pareto: Optuna's best trials (non-dominated, feasible) over (final loss, speed,
            instability); in single mode the feasible trial of lowest final loss.
        baselines: reference runs (no clipping, fixed norm 1.0), same seed, one rung long.
        trials: every trial of the study: pruned, failed and surplus ones included.
        train_steps: optimizer steps spent (probe + trials + baselines).
        cost: those steps by item: the probe, the baselines, each rung, full length.
        warning: why there is no choice, or what to distrust about it.

    >>> import torch
    >>> from torch import nn
    >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    >>> batches = [(x[i : i + 16], x[i : i + 16].sum(1, keepdim=True)) for i in range(0, 64, 16)]
    >>> loss_fn = lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1])
    >>> import autoclip
    >>> task = autoclip.Task(lambda: nn.Linear(4, 1), lambda p: torch.optim.SGD(p, lr=0.1),
    ...                      loss_fn, batches, steps=20, name="doc")
    >>> result = autoclip.tune(task, n_trials=3, probe_steps=5, baselines=False)
    >>> len(result.trials), result.chosen.state, isinstance(result.clipper(), autoclip.BaseClipper)
    (3, 'COMPLETE', True)
    >>> TuneResult.from_json(result.to_json()).chosen == result.chosen
    True
    """

    study_name: str
    mode: str
    chosen: TrialRecord | None
    rule: str
    pareto: tuple[TrialRecord, ...]
    baselines: dict[str, TrialRecord]
    trials: tuple[TrialRecord, ...]
    proposal: Proposal
    train_steps: int
    n_trials: int
    storage: str | None = None
    objective_names: tuple[str, ...] = field(default=NAMES)
    cost: dict[str, int] = field(default_factory=dict)
    warning: str | None = None

    @property
    def best_config(self) -> dict[str, Any]:
        """The chosen configuration ({} when nothing was chosen)."""
        return dict(self.chosen.config or {}) if self.chosen is not None else {}

    def clipper(self) -> BaseClipper:
        """The chosen clipper, warm-started from the probe's norms, ready to ``attach``."""
        if self.chosen is None:
            raise ConfigError(f"no configuration was chosen: {self.warning}")
        return create_clipper(**self.best_config).warm_start(self.proposal.warm_norms)


def _record(t: FrozenTrial) -> TrialRecord:
    ua = t.user_attrs
    rec = serialize.decode(ua.get(ATTR + "trial") or {})
    values = rec.get("objectives")
    reason = rec.get("reason") or t.system_attrs.get("fail_reason")
    if rec.get("surplus"):
        reason = "surplus: started beyond the trial budget"
    return TrialRecord(
        number=t.number,
        state=t.state.name,
        config=rec.get("config"),
        lr_scale=float(t.params.get("lr_scale", 1.0)),
        values=None if values is None else tuple(values),
        diverged=bool(rec.get("diverged", False)),
        reason=reason,
        clipped_fraction=rec.get("clipped_fraction"),
        steps_run=int(rec.get("steps_run", 0)),
        retry_of=_retry_of(t),
        rungs=tuple(tuple(r) for r in rec.get("rungs") or ()),
    )


SLIVER = 0.1  # an objective's spread on the front counts as at least a tenth of its size


def choose(
    front: Sequence[TrialRecord], weights: Sequence[float] | None
) -> tuple[TrialRecord, str]:
    """Pick one record from a Pareto front: by weights, or the knee.

    Each objective is scaled by its spread over the front, but by no less than ``SLIVER`` of
    its largest magnitude there: on a front of two trials a speed that differs by 0.3% would
    otherwise weigh as much as a final loss that differs by 6%.

    >>> def rec(n, v):
    ...     return TrialRecord(number=n, state="COMPLETE", config=None, values=v)
    >>> a, b = rec(0, (0.653, 0.634, 0.157)), rec(1, (0.689, 0.632, 0.153))
    >>> choose([a, b], None)[0] is a  # b is a sliver faster and steadier, a 6% lower
    True
    """
    vals = np.asarray([r.values for r in front], dtype=float)
    lo, hi = vals.min(axis=0), vals.max(axis=0)
    scale = np.maximum(hi - lo, SLIVER * np.abs(vals).max(axis=0))
    norm = (vals - lo) / np.where(scale > 0, scale, 1.0)
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
            "objective is scaled by its spread over the front (at least a tenth of its size)"
        )
    return front[i], rule


def _cost(plan: Plan, probe: int, trials, baselines) -> dict[str, int]:
    """Optimizer steps by item; each trial's steps split over the rungs it trained through."""
    cost = {"probe": probe, "baselines": sum(b.steps_run for b in baselines)}
    bounds = [0, *plan.rungs, plan.steps]
    for k, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        name = f"rung {k + 1} (steps {lo + 1}-{hi})" if hi < plan.steps else "full length"
        if len(bounds) == 2:
            name = "trials"
        cost[name] = sum(min(max(r.steps_run - lo, 0), hi - lo) for r in trials)
    beyond = sum(max(r.steps_run - plan.steps, 0) for r in trials)
    if beyond:
        cost["trials beyond the planned length"] = beyond
    return cost


def _result(study, storage, n_trials, weights, proposal, settings, base) -> TuneResult:
    trials = [_record(t) for t in study.get_trials(deepcopy=False)]
    full = [r for r in trials if r.state == "COMPLETE" and r.values is not None]
    if not full:
        reasons = sorted({r.reason for r in trials if r.reason})
        raise StorageError(
            f"no trial of study {study.study_name!r} completed"
            + (f"; reasons: {reasons[:3]}" if reasons else "")
        )
    by_number = {r.number: r for r in trials}
    # Optuna's best trials: non-dominated among the feasible (diverged runs are infeasible).
    best = [by_number[t.number] for t in study.best_trials]
    best = [r for r in best if not r.diverged]
    chosen, warning = None, None
    if not any(not r.diverged for r in full):
        best = []
        rule = "none: every full-length trial diverged"
        warning = (
            f"every one of the {len(full)} full-length trials diverged; no configuration is "
            "chosen. Try tighter clipping (a smaller max_norm), a smaller learning rate, or "
            "more trials"
        )
    elif settings.mode == "single":
        # best_trials holds the feasible trial of lowest loss (constraints: not diverged,
        # instability <= max_instability), if any trial was feasible.
        pool = best or [r for r in full if not r.diverged]
        chosen = min(pool, key=lambda r: r.values[0])
        best = [chosen]
        rule = (
            f"lowest final loss among trials with instability <= {settings.max_instability}"
            if pool is not None and chosen.values[2] <= settings.max_instability
            else "lowest final loss (no trial met the instability constraint)"
        )
    else:
        chosen, rule = choose(best, weights)
    baselines = {k: TrialRecord.from_dict(v) for k, v in base.items()}
    probe_steps = int(study.user_attrs.get(ATTR + "probe_steps", 0))
    plan = Plan.make(settings.steps) if settings.fidelity else Plan(settings.steps, ())
    cost = _cost(plan, probe_steps, trials, baselines.values())
    return TuneResult(
        study_name=study.study_name,
        mode=settings.mode,
        chosen=chosen,
        rule=rule,
        pareto=tuple(sorted(best, key=lambda r: r.values)),
        baselines=baselines,
        trials=tuple(trials),
        proposal=proposal,
        train_steps=sum(cost.values()),
        n_trials=n_trials,
        storage=redact_url(storage) if isinstance(storage, str) else None,
        cost=cost,
        warning=warning,
    )


def load_result(
    storage: str | optuna.storages.BaseStorage,
    study_name: str | None = None,
    *,
    weights: Sequence[float] | None = None,
) -> TuneResult:
    """Summarise an existing study from its storage (the study's only one if no name).

    >>> import torch
    >>> from torch import nn
    >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    >>> batches = [(x[i : i + 16], x[i : i + 16].sum(1, keepdim=True)) for i in range(0, 64, 16)]
    >>> loss_fn = lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1])
    >>> import autoclip
    >>> task = autoclip.Task(lambda: nn.Linear(4, 1), lambda p: torch.optim.SGD(p, lr=0.1),
    ...                      loss_fn, batches, steps=20, name="doc")
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "doc.journal")
    >>> _ = autoclip.tune(task, n_trials=2, probe_steps=5, storage=path, baselines=False)
    >>> result = load_result(path)
    >>> result.study_name, len(result.trials)
    ('autoclip-doc', 2)
    """
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
