"""Optuna search over clipping configurations.

``tune(task)`` probes the task (the measured suggestion), turns the proposal into a search
space (the strategy as a categorical, each strategy's threshold as a conditional parameter,
optionally the learning rate), enqueues its first trials, and runs an Optuna study whose
trials each train the task from scratch with one clipper. By default it searches the
recommended strategy alone, and the first trials are a ladder of its threshold, evenly spaced
on a log scale over the proposal's range and through the measured value (which comes first);
with several strategies (``strategies=[...]``) they are the recommendation and each other
candidate. The sampler proposes what follows. ``suggest_clipper(trial, proposal)`` is the same
sampling step, for users who run their own study.

Multi-fidelity by default (``fidelity=True``): the trials form successive-halving brackets
over trial lengths (1/9, 1/3, full), ranked at each rung on the level of the curve so far,
with ties broken toward the loosest clipper that still clips half of the steps (the short
horizon's bias toward tight clipping, countered), so that only survivors train for the full
length and only they can be chosen; see
``_fidelity`` and ``_bracket``. ``TuneResult.cost`` says what every part spent.

Modes:

* ``"pareto"``: minimise (final loss, convergence speed, instability) jointly with
  multi-objective TPE; rungs rank by non-dominated sorting (Optuna does not prune
  multi-objective studies); the choice is the knee of ``study.best_trials``, where a
  diverged trial is infeasible (``trial.set_constraint``).
* ``"single"``: minimise the final loss subject to ``instability <= max_instability``
  (a constraint, as is divergence); rungs rank on the level of the loss curve.

When every full-length trial diverged, nothing is chosen and ``TuneResult.warning`` says so.

Storage and workers: ``storage=None`` keeps the study in memory; a file path uses Optuna's
journal file (safe for several processes on one machine); a URL (``postgresql://``,
``sqlite://``...) uses Optuna's RDB storage with heartbeats, so the trial of a worker that died
is marked failed and retried with the same parameters. The first process to create a study is
its coordinator: it probes, stores the proposal in the study (a system attribute, out of the
``optuna studies`` table) and enqueues the first trials (above), once;
every other process (``workers=N`` locally, or the same command on other machines) loads them
from the study. Trials count towards ``n_trials`` across all workers and restarts; a trial
started beyond the budget by a race is stopped at once and marked ``surplus``.
"""

from autoclip.search._result import (
    TrialRecord,
    TuneResult,
    choose,
    describe_config,
    load_result,
)
from autoclip.search._space import suggest_clipper
from autoclip.search._store import open_storage
from autoclip.search._tune import tune

__all__ = [
    "TrialRecord",
    "TuneResult",
    "choose",
    "describe_config",
    "load_result",
    "open_storage",
    "suggest_clipper",
    "tune",
]
