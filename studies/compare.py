"""Compare autoclip's thresholds with the usual clipping baselines on the bundled tasks.

    python -m autoclip_studies.compare                 # all tasks, 3 seeds -> studies/results/
    python -m autoclip_studies.compare --smoke         # every arm on every task, tiny budget
    python -m autoclip_studies.compare --sweep         # final metric vs threshold multiples

For each task and seed, every arm trains the task from scratch with ``autoclip.training.train``:

==================  ===========================================================================
arm                 clipper
==================  ===========================================================================
none                no clipping
fixed 1.0           ``NormClip(1.0)``, i.e. ``clip_grad_norm_(params, 1.0)``
default             the task's conventional ``default_clipper`` (its module says where from)
AutoClip p10        Seetharaman et al. 2020 as published: the 10th percentile of the *full*
                    norm history (``autoclip_studies.reference.AutoClipOriginal``)
ZClip               ``ZScoreClip()`` with ZClip's published defaults
AGC 0.01            ``AGC(0.01)``, the NFNets value
5x mean norm        the rule of thumb: ``NormClip(5 * mean norm of the probe's warm-up)``
suggest             ``autoclip.suggest`` (warm-up + measured races, ``--probe-steps`` of
                    warm-up) on this seed's fresh model, warm-started clipper
tune                ``autoclip.tune`` run once per task on a separate seed (``--tune-seed``),
                    so the tuned configuration is judged on seeds it never saw
==================  ===========================================================================

The final metric is ``autoclip.objectives.final_loss``: the task's held-out loss when it has an
``eval_fn`` (all bundled tasks do), else the median of the last 10 % of training losses; a run
that diverged scores its initial loss (no better than not training). Steps to target is the
first step whose training loss reaches ``task.target_loss``. Tuning cost counts the optimizer
steps spent before training (probe, trials) and, in brackets, that cost in training runs.

Every run uses one intra-op thread (``torch.set_num_threads(1)``) and runs are spread over
``--jobs`` processes. One thread is both faster for models this small on a shared CPU and
reproducible: a deep net at a high learning rate can end differently when the thread count
changes the order of floating-point reductions.

Outputs in ``--out`` (``studies/results`` by default; ``--smoke`` writes to ``<out>/smoke``):
``README.md`` (the goals and whether they are met), ``<task>.md`` (the table), ``<task>.png``
(loss curves per arm), ``<task>.json`` (every run, to re-plot); with ``--sweep``:
``sweep.md`` and ``sweep_<task>.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import datetime
import importlib
import inspect
import json
import math
import multiprocessing
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Only the standard library and numpy at import time: `autoclip studies` lists this module,
# and the worker processes import torch themselves.

RESULTS = Path(__file__).resolve().parent / "results"
SWEEP_MULTIPLES = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16)
PROBE_STEPS = 50  # autoclip.suggest's default warm-up (a tenth of its 500-step budget)
TUNE_TRIALS = 16  # the proposal's five candidates first, then eleven TPE trials
TUNE_SEED = 100  # a seed no evaluation run uses
MATTERS = 0.05  # clipping "matters" where no clipping is 5 % worse than the best clipped arm
SMOKE = {"seeds": 1, "steps": 40, "probe_steps": 30, "trials": 3}

ARMS = (
    "none",
    "fixed 1.0",
    "default",
    "AutoClip p10",
    "ZClip",
    "AGC 0.01",
    "5x mean norm",
    "suggest",
    "tune",
)
FIXED_ARMS = {  # arms whose clipper does not depend on a probe or a search
    "none": None,
    "fixed 1.0": {"name": "norm", "max_norm": 1.0},
    "ZClip": {"name": "zscore"},
    "AGC 0.01": {"name": "agc", "clipping": 0.01},
}


# ---------------------------------------------------------------------------------------------
# What one run returns
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of one arm on one seed, reduced to what the tables and plots need."""

    task: str
    arm: str
    seed: int
    config: dict[str, Any] | None
    final: float
    diverged: bool
    reason: str | None
    steps_to_target: int | None
    clipped_fraction: float
    steps_run: int
    tuning_steps: int
    wall_s: float
    cpu_s: float
    losses: tuple[float, ...]
    multiple: float | None = None  # sweep runs: threshold / the proposal's max_norm


@dataclasses.dataclass(frozen=True)
class Probed:
    """What the probe of one (task, seed) gives the suggest, rule-of-thumb and sweep arms."""

    recommended: dict[str, Any]
    warm_norms: tuple[float, ...]
    proposal_max_norm: float
    mean_norm: float
    steps: int
    cpu_s: float


@dataclasses.dataclass(frozen=True)
class Tuned:
    """What ``autoclip.tune`` found for one task."""

    config: dict[str, Any]
    warm_norms: tuple[float, ...]
    train_steps: int
    n_trials: int
    wall_s: float
    cpu_s: float


# ---------------------------------------------------------------------------------------------
# Worker side: everything below runs in the pool's processes
# ---------------------------------------------------------------------------------------------
def _init_worker() -> None:
    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


_TASKS: dict[tuple[str, int], Any] = {}


def build_task(name: str, seed: int):
    """The bundled study ``name`` built for ``seed`` (cached per process)."""
    key = (name, seed)
    if key not in _TASKS:
        module = importlib.import_module(f"autoclip_studies.{name}")
        if "seed" in inspect.signature(module.make_task).parameters:
            task = module.make_task(seed=seed)
        else:  # a task without a seeded data order: only the model initialisation changes
            task = dataclasses.replace(module.make_task(), seed=seed)
        _TASKS[key] = task
    return _TASKS[key]


def _autoclip_original(percentile: float):
    """A BaseClipper that runs ``AutoClipOriginal`` as published inside the training loop.

    The published code is called unchanged (its own ``.item()`` per tensor, Python history,
    ``np.percentile`` over all of it, ``clip_grad_norm_``). The one addition is the harness's
    common non-finite policy: a step whose gradients are NaN/inf is zeroed and kept out of the
    history, as every autoclip clipper does, instead of poisoning the history for good.
    """
    import torch

    from autoclip.clippers import BaseClipper
    from autoclip_studies.reference import AutoClipOriginal

    class AutoClipPublished(BaseClipper):
        name = "autoclip_original"  # not registered: it exists for this comparison only

        def __init__(self, percentile: float = 10.0) -> None:
            self.percentile = percentile
            self.original = AutoClipOriginal(percentile)
            super().__init__()

        def _clip(self, params, grads, total, finite):
            if not bool(finite):  # skip the step: no update, nothing added to the history
                for g in grads:
                    g.zero_()
                return torch.tensor(math.nan), torch.tensor(False)
            norm = self.original(params)
            threshold = float(np.percentile(self.original.history, self.percentile))
            return torch.tensor(threshold), torch.tensor(norm > threshold)

    return AutoClipPublished(percentile)


def _run(
    name: str,
    seed: int,
    arm: str,
    clipper: Any,
    steps: int | None,
    tuning_steps: int = 0,
    multiple: float | None = None,
) -> Run:
    """Train one arm; ``clipper`` is a config dict, None, or ("warm", config, norms)."""
    from autoclip.clippers import create_clipper
    from autoclip.objectives import final_loss, steps_to_target
    from autoclip.training import train

    task = build_task(name, seed)
    if isinstance(clipper, tuple) and clipper[0] == "warm":
        _, config, norms = clipper
        clip = create_clipper(**config)
        if clip.adaptive and norms:
            clip.warm_start(list(norms))
    elif isinstance(clipper, tuple) and clipper[0] == "autoclip_original":
        clip = _autoclip_original(clipper[1])
    else:
        clip = clipper
    wall, cpu = time.perf_counter(), time.process_time()
    log = train(task, clip, steps=steps)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Run(
        task=name,
        arm=arm,
        seed=seed,
        config=log.clipper,
        final=final_loss(log),
        diverged=log.diverged,
        reason=log.reason,
        steps_to_target=steps_to_target(log, task.target_loss),
        clipped_fraction=log.clipped_fraction,
        steps_run=log.steps_run,
        tuning_steps=tuning_steps,
        wall_s=wall,
        cpu_s=cpu,
        losses=tuple(log.losses),
        multiple=multiple,
    )


def _probe(name: str, seed: int, probe_steps: int) -> Probed:
    from autoclip.propose import suggest_task

    cpu = time.process_time()
    # What autoclip.suggest returns: the warm-up (probe_steps) and the measured races.
    proposal = suggest_task(build_task(name, seed), probe_steps)
    return Probed(
        recommended=proposal.recommended.config,
        warm_norms=tuple(proposal.warm_norms),
        proposal_max_norm=float(proposal.candidate("norm").params["max_norm"]),
        mean_norm=float(proposal.stats.mean),
        steps=proposal.steps_spent,
        cpu_s=time.process_time() - cpu,
    )


def _tune(name: str, seed: int, n_trials: int, steps: int | None, probe_steps: int) -> Tuned:
    from autoclip.search import tune

    wall, cpu = time.perf_counter(), time.process_time()
    result = tune(
        build_task(name, seed),
        n_trials=n_trials,
        steps=steps,
        seed=0,
        probe_steps=probe_steps,
        baselines=False,  # the comparison trains its own baselines on every seed
    )
    return Tuned(
        config=result.best_config,
        warm_norms=tuple(result.proposal.warm_norms),
        train_steps=result.train_steps,
        n_trials=result.n_trials,
        wall_s=time.perf_counter() - wall,
        cpu_s=time.process_time() - cpu,
    )


# ---------------------------------------------------------------------------------------------
# Driver: schedule the runs, dependent ones as soon as their probe or search is done
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
    tasks: list[str]
    seeds: list[int]
    steps: int | None  # None: each task's own budget
    probe_steps: int
    trials: int
    tune_seed: int
    sweep: bool
    jobs: int


def execute(plan: Plan, log=print) -> tuple[list[Run], dict[str, Tuned], list[str]]:
    """Run every arm of ``plan``; return the runs, the search results per task, the errors."""
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch state
    runs: list[Run] = []
    tuned: dict[str, Tuned] = {}
    pending: dict[cf.Future, tuple] = {}
    aliases: dict[tuple[str, int, str], list[str]] = {}
    errors: list[str] = []
    done = 0
    with cf.ProcessPoolExecutor(plan.jobs, mp_context=ctx, initializer=_init_worker) as pool:

        def submit(kind: str, fn, *args) -> None:
            pending[pool.submit(fn, *args)] = (kind, args)

        # Longest first: a search is ~n_trials runs, so it must not start last.
        if not plan.sweep:
            for name in plan.tasks:
                submit(
                    "tune", _tune, name, plan.tune_seed, plan.trials, plan.steps, plan.probe_steps
                )
        for name in plan.tasks:
            for seed in plan.seeds:
                submit("probe", _probe, name, seed, plan.probe_steps)
                if plan.sweep:
                    submit("run", _run, name, seed, "none", None, plan.steps)
                    continue
                # Arms with the same clipper (a task whose default is norm 1.0) share a run.
                same: dict[str, list[str]] = {}
                arms = {**FIXED_ARMS, "default": build_task(name, seed).default_clipper}
                for arm, config in arms.items():
                    same.setdefault(json.dumps(config, sort_keys=True), []).append(arm)
                for first, *copies in same.values():
                    submit("run", _run, name, seed, first, arms[first], plan.steps)
                    aliases[(name, seed, first)] = copies
                submit(
                    "run", _run, name, seed, "AutoClip p10", ("autoclip_original", 10.0), plan.steps
                )

        while pending:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                kind, args = pending.pop(fut)
                try:
                    result = fut.result()
                except Exception as exc:  # a bug in one arm must not lose the others' runs
                    errors.append(f"{kind} {args[:2]}: {type(exc).__name__}: {exc}")
                    log(f"FAILED {errors[-1]}")
                    continue
                if kind == "run":
                    runs.append(result)
                    for arm in aliases.get((result.task, result.seed, result.arm), []):
                        runs.append(dataclasses.replace(result, arm=arm))
                    done += 1
                    log(
                        f"[{done}] {result.task} seed {result.seed} {result.arm:<13} "
                        f"final {result.final:.4g}{' DIVERGED' if result.diverged else ''} "
                        f"({result.cpu_s:.1f} s cpu)"
                    )
                elif kind == "probe":
                    name, seed, _ = args
                    p: Probed = result
                    if plan.sweep:
                        for m in SWEEP_MULTIPLES:
                            config = {"name": "norm", "max_norm": m * p.proposal_max_norm}
                            submit(
                                "run", _run, name, seed, f"x{m:g}", config, plan.steps, p.steps, m
                            )
                        continue
                    warm = ("warm", p.recommended, p.warm_norms)
                    submit("run", _run, name, seed, "suggest", warm, plan.steps, p.steps)
                    rule = {"name": "norm", "max_norm": 5.0 * p.mean_norm}
                    submit("run", _run, name, seed, "5x mean norm", rule, plan.steps, p.steps)
                elif kind == "tune":
                    name = args[0]
                    t: Tuned = result
                    tuned[name] = t
                    log(f"tuned {name}: {t.config} ({t.train_steps} steps, {t.cpu_s:.0f} s cpu)")
                    for seed in plan.seeds:
                        warm = ("warm", t.config, t.warm_norms)
                        submit("run", _run, name, seed, "tune", warm, plan.steps, t.train_steps)
    return runs, tuned, errors


# ---------------------------------------------------------------------------------------------
# Summaries, tables and plots
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ArmSummary:
    arm: str
    n: int
    mean: float
    std: float
    diverged: int
    reached: int
    median_steps_to_target: float | None
    clipped: float
    tuning_steps: float
    cpu_s: float
    configs: tuple[str, ...]

    def noise_vs(self, other: ArmSummary) -> float:
        """Two standard errors of the difference of the two means."""
        return 2.0 * math.sqrt((self.std**2 + other.std**2) / max(1, min(self.n, other.n)))


def describe(config: dict[str, Any] | None) -> str:
    if config is None:
        return "-"
    name = config["name"]
    key = {
        "norm": "max_norm",
        "zscore": "z_thresh",
        "quantile": "quantile",
        "agc": "clipping",
        "value": "clip_value",
        "autoclip_original": "percentile",
    }.get(name)
    if key in config:
        return f"{name} {config[key]:.3g}"
    return name


def summarise(runs: Sequence[Run]) -> ArmSummary:
    finals = np.array([r.final for r in runs], dtype=float)
    hits = [r.steps_to_target for r in runs if r.steps_to_target is not None]
    configs = tuple(dict.fromkeys(describe(r.config) for r in runs))
    return ArmSummary(
        arm=runs[0].arm,
        n=len(runs),
        mean=float(finals.mean()),
        std=float(finals.std(ddof=1)) if len(runs) > 1 else 0.0,
        diverged=sum(r.diverged for r in runs),
        reached=len(hits),
        median_steps_to_target=float(np.median(hits)) if hits else None,
        clipped=float(np.mean([r.clipped_fraction for r in runs])),
        tuning_steps=float(np.mean([r.tuning_steps for r in runs])),
        cpu_s=float(np.mean([r.cpu_s for r in runs])),
        configs=configs,
    )


def by_arm(runs: Sequence[Run], task: str) -> dict[str, ArmSummary]:
    """Per-arm summaries for ``task``: the comparison's arms in order, then any others."""
    mine = [r for r in runs if r.task == task]
    out = {}
    for arm in dict.fromkeys([*ARMS, *(r.arm for r in mine)]):
        arm_runs = sorted((r for r in mine if r.arm == arm), key=lambda r: r.seed)
        if arm_runs:
            out[arm] = summarise(arm_runs)
    return out


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2e}"


def task_table(task, summaries: dict[str, ArmSummary], steps: int) -> str:
    best = min(s.mean for s in summaries.values())
    rows = [
        "| arm | clipper | final metric (mean ± std) | diverged | steps to target "
        "| clipped | tuning cost, steps (runs) | cpu s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries.values():
        metric = f"{_fmt(s.mean)} ± {_fmt(s.std)}"
        if s.mean == best:
            metric = f"**{metric}**"
        target = (
            f"{s.median_steps_to_target:.0f} ({s.reached}/{s.n})"
            if s.median_steps_to_target is not None
            else f"never (0/{s.n})"
        )
        cost = f"{s.tuning_steps:,.0f} ({s.tuning_steps / steps:.2g})" if s.tuning_steps else "0"
        rows.append(
            f"| {s.arm} | {'; '.join(s.configs)} | {metric} | {s.diverged}/{s.n} | {target} "
            f"| {s.clipped:.0%} | {cost} | {s.cpu_s:.1f} |"
        )
    return "\n".join(rows)


def goals(name: str, arms: dict[str, ArmSummary]) -> list[str]:
    """The issue's goals for one task, checked against the measurements."""
    lines = []
    none, fixed = arms.get("none"), arms.get("fixed 1.0")
    clipped = [s for a, s in arms.items() if a != "none"]
    best = min(clipped + ([none] if none else []), key=lambda s: s.mean)
    tuned, sugg = arms.get("tune"), arms.get("suggest")
    if tuned is not None:
        gap = tuned.mean - best.mean
        ok = tuned.diverged == 0 and gap <= tuned.noise_vs(best)
        lines.append(
            f"- tune never diverges and is within noise of the best arm ({best.arm}, "
            f"{_fmt(best.mean)}): **{'met' if ok else 'NOT met'}** (tune {_fmt(tuned.mean)}, "
            f"gap {_fmt(gap)}, noise {_fmt(tuned.noise_vs(best))}, "
            f"{tuned.diverged} diverged)"
        )
    if none is not None and sugg is not None and fixed is not None:
        best_clip = min(clipped, key=lambda s: s.mean)
        # Relative, not against the noise: an unclipped run that fails on some seeds has a
        # spread so wide that no difference would count, although failing is the point.
        matters = none.diverged > 0 or none.mean > (1 + MATTERS) * best_clip.mean
        if not matters:
            lines.append(
                f"- clipping does not matter here (no clipping {_fmt(none.mean)} vs best "
                f"clipped {_fmt(best_clip.mean)}): the suggest goal does not apply"
            )
        else:
            ok = all(
                sugg.mean < other.mean and sugg.diverged <= other.diverged
                for other in (none, fixed)
            )
            lines.append(
                f"- suggest beats no clipping ({_fmt(none.mean)}) and fixed 1.0 "
                f"({_fmt(fixed.mean)}): **{'met' if ok else 'NOT met'}** "
                f"(suggest {_fmt(sugg.mean)})"
            )
    return lines


def header(title: str, command: str, started: float, wall: float, plan: Plan) -> str:
    import optuna
    import sklearn
    import torch

    date = datetime.datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds")
    return "\n".join(
        [
            f"# {title}",
            "",
            "Produced by `studies/compare.py`; do not edit by hand, rerun instead.",
            "",
            f"- command: `{command}`",
            f"- date: {date}; wall time {wall / 60:.1f} min",
            f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
            f"optuna {optuna.__version__}, numpy {np.__version__}, "
            f"scikit-learn {sklearn.__version__}",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs; {plan.jobs} worker "
            "processes, 1 torch thread each",
            f"- seeds {plan.seeds}; probe {plan.probe_steps} steps; tune {plan.trials} trials "
            f"on seed {plan.tune_seed}; steps per run: "
            + ("each task's default" if plan.steps is None else str(plan.steps)),
            "",
        ]
    )


def plot_curves(path: Path, name: str, runs: Sequence[Run], target: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Arms that trained the very same runs (a default of norm 1.0) share one line.
    groups: dict[tuple, list[str]] = {}
    for arm in dict.fromkeys([*ARMS, *(r.arm for r in runs)]):
        mine = sorted((r for r in runs if r.arm == arm), key=lambda r: r.seed)
        if mine:
            groups.setdefault(tuple((r.seed, r.losses) for r in mine), []).append(arm)
    fig, ax = plt.subplots(figsize=(8, 5))
    first = []
    for i, (key, arms) in enumerate(groups.items()):
        losses = [np.asarray(r_losses, dtype=float) for _, r_losses in key]
        length = max(len(x) for x in losses)
        curves = np.full((len(losses), length), np.nan)
        for j, x in enumerate(losses):
            curves[j, : len(x)] = _smooth(x, length)
            first.append(x[0] if len(x) else np.nan)
        with warnings.catch_warnings():  # steps after every seed diverged: all-NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(curves, axis=0)
        div = sum(r.diverged for r in runs if r.arm == arms[0])
        label = " = ".join(arms) + (f" ({div} diverged)" if div else "")
        ax.plot(median, label=label, color=f"C{i % 10}", ls="-" if i < 10 else "--", lw=1.2)
    if target is not None:
        ax.axhline(target, color="grey", ls=":", lw=1, label="target")
    start = np.nanmedian(first)
    ax.set_yscale("log")
    if math.isfinite(start) and start > 0:
        ax.set_ylim(top=10 * start)  # an exploded run leaves the plot upwards
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (running mean, median over seeds)")
    ax.set_title(name)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(path: Path, name: str, runs: Sequence[Run], none: ArmSummary | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in runs if r.multiple is not None]
    ms = sorted({r.multiple for r in sweep})
    mean = [np.mean([r.final for r in sweep if r.multiple == m]) for m in ms]
    lo = [np.min([r.final for r in sweep if r.multiple == m]) for m in ms]
    hi = [np.max([r.final for r in sweep if r.multiple == m]) for m in ms]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.fill_between(ms, lo, hi, alpha=0.2, label="min-max over seeds")
    ax.plot(ms, mean, "o-", label="mean over seeds")
    for m in ms:
        div = sum(r.diverged for r in sweep if r.multiple == m)
        if div:
            ax.annotate(f"{div} div", (m, hi[ms.index(m)]), fontsize=7, ha="center")
    if none is not None:
        ax.axhline(none.mean, color="grey", ls="--", lw=1, label="no clipping (mean)")
    ax.axvline(1.0, color="k", ls=":", lw=1, label="proposal (x1)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("max_norm / proposal's max_norm")
    ax.set_ylabel("final metric")
    ax.set_title(f"{name}: sensitivity to the threshold")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(x: np.ndarray, steps: int) -> np.ndarray:
    """Running mean over ~2 % of the run, so a curve shows the trend, not the batch noise."""
    w = max(1, steps // 50)
    if len(x) < w:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    out = np.empty_like(x)
    out[w - 1 :] = (c[w:] - c[:-w]) / w
    out[: w - 1] = c[1:w] / np.arange(1, w)
    return out


def _errors(errors: list[str]) -> list[str]:
    if not errors:
        return []
    head = "**Jobs that failed** (their arms are missing below):"
    return [head, "", *(f"- {e}" for e in errors), ""]


def write_comparison(out: Path, plan: Plan, runs, tuned, errors, command, started, wall) -> None:
    out.mkdir(parents=True, exist_ok=True)
    readme = [header("Clipping comparison", command, started, wall, plan), *_errors(errors)]
    readme.append(
        "Goals (issue 6): autoclip's tuned configuration never diverges and is within noise "
        "(two standard errors of the difference of means) of the best arm on every task; "
        "`suggest` alone beats no clipping and fixed 1.0 wherever clipping matters (no "
        f"clipping diverges on some seed, or its mean is more than {MATTERS:.0%} worse than "
        "the best clipped arm's). "
        "Checked below from the measurements; where a goal is not met, the task's notes "
        "must say why. Threshold sensitivity: `--sweep` writes [sweep.md](sweep.md).\n"
    )
    for name in plan.tasks:
        task = build_task(name, plan.seeds[0])
        steps = plan.steps or task.steps
        arms = by_arm(runs, name)
        if not arms:  # every job of this task failed: the errors above say why
            continue
        body = [
            header(name, command, started, wall, plan),
            task.description,
            "",
            f"{steps} steps per run; target loss {task.target_loss}; final metric: "
            + ("held-out loss" if task.eval_fn is not None else "median of the last 10 %"),
            "",
            task_table(task, arms, steps),
            "",
        ]
        if name in tuned:
            t = tuned[name]
            body += [
                f"tune chose `{t.config}` after {t.n_trials} trials on seed {plan.tune_seed} "
                f"({t.train_steps:,} steps, {t.cpu_s:.0f} s cpu).",
                "",
            ]
        body += ["Goals:", "", *goals(name, arms), "", f"![loss curves]({name}.png)", ""]
        diverged = [r for r in runs if r.task == name and r.diverged]
        if diverged:
            body += ["Diverged runs:", ""]
            body += [f"- {r.arm}, seed {r.seed}: {r.reason}" for r in diverged]
            body.append("")
        (out / f"{name}.md").write_text("\n".join(body))
        mine = [r for r in runs if r.task == name]
        plot_curves(out / f"{name}.png", name, mine, task.target_loss)
        (out / f"{name}.json").write_text(
            json.dumps([dataclasses.asdict(r) for r in mine], allow_nan=True)
        )
        readme += [
            f"## [{name}]({name}.md)",
            "",
            task_table(task, arms, steps),
            "",
            *goals(name, arms),
            "",
        ]
    (out / "README.md").write_text("\n".join(readme))


def write_sweep(out: Path, plan: Plan, runs, errors, command, started, wall) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = [header("Threshold sensitivity", command, started, wall, plan), *_errors(errors)]
    text.append(
        "Each task and seed: the probe's proposed fixed `max_norm` (the norm candidate, "
        "whatever strategy is recommended), then fixed norm clipping at multiples of it. "
        "A flat curve means the threshold is forgiving; a cliff means it must be measured.\n"
    )
    for name in plan.tasks:
        mine = [r for r in runs if r.task == name]
        arms = by_arm(mine, name)
        none = arms.pop("none", None)
        if not arms:
            continue
        text += [f"## {name}", ""]
        text += [
            "| max_norm / proposal | mean ± std | min | max | diverged | clipped |",
            "|---|---|---|---|---|---|",
        ]
        for s in sorted(arms.values(), key=lambda s: float(s.arm[1:])):
            finals = [r.final for r in mine if r.arm == s.arm]
            text.append(
                f"| {s.arm} | {_fmt(s.mean)} ± {_fmt(s.std)} | {_fmt(min(finals))} "
                f"| {_fmt(max(finals))} | {s.diverged}/{s.n} | {s.clipped:.0%} |"
            )
        if none is not None:
            text.append(
                f"| no clipping | {_fmt(none.mean)} ± {_fmt(none.std)} | | "
                f"| {none.diverged}/{none.n} | |"
            )
        proposals = sorted({r.config["max_norm"] for r in mine if r.multiple == 1})
        text += [
            "",
            f"Proposed max_norm per seed: {', '.join(_fmt(p) for p in proposals)}",
            "",
            f"![sweep](sweep_{name}.png)",
            "",
        ]
        plot_sweep(out / f"sweep_{name}.png", name, mine, none)
    (out / "sweep.md").write_text("\n".join(text))


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def benchmark_tasks() -> list[str]:
    """Bundled studies that define their own ``make_task`` (not scripts that import one)."""
    from autoclip.task import bundled_studies

    return [
        name
        for name in sorted(bundled_studies())
        if importlib.import_module(f"autoclip_studies.{name}").make_task.__module__
        == f"autoclip_studies.{name}"
    ]


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    studies = benchmark_tasks()
    p = argparse.ArgumentParser(
        prog="python -m autoclip_studies.compare",
        description=(__doc__ or "").splitlines()[0],
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        default=studies,
        choices=studies,
        metavar="TASK",
        help=f"bundled studies to run (default: all of {studies})",
    )
    p.add_argument("--seeds", type=int, default=3, help="evaluation seeds 0..N-1 (default 3)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help=f"every arm on every task with a tiny budget ({SMOKE}); writes to <out>/smoke",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="instead of the comparison, fixed norm clipping at "
        f"{[f'{m:g}' for m in SWEEP_MULTIPLES]} x the proposal",
    )
    p.add_argument("--trials", type=int, default=TUNE_TRIALS, help="autoclip.tune trials")
    p.add_argument(
        "--tune-seed",
        type=int,
        default=TUNE_SEED,
        help="the task seed autoclip.tune searches on (not an evaluation seed)",
    )
    p.add_argument("--probe-steps", type=int, default=PROBE_STEPS)
    p.add_argument(
        "--steps", type=int, default=None, help="steps per run (default: each task's own budget)"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes, one torch thread each (default: the CPU count)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds = min(args.seeds, SMOKE["seeds"])
        args.steps = args.steps or SMOKE["steps"]
        args.probe_steps = min(args.probe_steps, SMOKE["probe_steps"])
        args.trials = min(args.trials, SMOKE["trials"])
        args.out = args.out / "smoke"
    if args.seeds < 1 or args.trials < 1 or args.jobs < 1:
        p.error("--seeds, --trials and --jobs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    plan = Plan(
        tasks=list(args.tasks),
        seeds=list(range(args.seeds)),
        steps=args.steps,
        probe_steps=args.probe_steps,
        trials=args.trials,
        tune_seed=args.tune_seed,
        sweep=args.sweep,
        jobs=args.jobs,
    )
    command = shlex.join(["python", "-m", "autoclip_studies.compare", *argv])
    started = time.time()
    runs, tuned, errors = execute(plan, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    wall = time.time() - started
    if plan.sweep:
        write_sweep(args.out, plan, runs, errors, command, started, wall)
    else:
        write_comparison(args.out, plan, runs, tuned, errors, command, started, wall)
    failed = f"; {len(errors)} jobs FAILED" if errors else ""
    print(f"wrote {args.out} in {wall / 60:.1f} min{failed}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
