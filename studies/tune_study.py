"""tune() with its defaults against a 12-point fixed-threshold grid: quality and compute.

Acceptance of the multi-fidelity search (issue 11): on each study task and each of 3 seeds,

1. the grid: norm clipping at 12 thresholds log-spaced over 0.01..100, each trained for the
   task's full length on that seed; its cost is 12 full runs;
2. ``autoclip.tune(task)`` with its defaults (9 configurations in one successive-halving
   bracket, the probe, the two baselines) on the same seed; its metric is the final loss
   (the task's held-out loss) of the configuration it chose, trained for the full length
   on that seed (the chosen trial itself: training is deterministic), and its cost is every
   optimizer step it spent (probe, measurement, baselines, every rung of every trial).

Goal per task: the mean over seeds of tune's final loss <= 1.05x the mean of the grid's best
threshold (the one with the best mean over the same seeds: an oracle choice), with tune's
mean cost <= 25% of the grid's.

The rung rule (``autoclip.search._fidelity``) was designed on replayed brackets of relu_rnn,
lstm_adding and digits_mlp (``studies/rung_study.py``: the design tasks); its one later
change, the tie-break between clippers that clip equally often, came after looking at
sgd_transformer and char_lstm seed 0. ar_forecast, char_lstm seeds 1-2, adamw_spiky and
tiny_transformer were judged with the rule fixed (held out); gru_classify, conv_digits and
deep_regression were written after it was fixed, as fresh held-out models. The search range
(1.5 decades either side of the measured value, where it was one) was set on the design
tasks' grids, with every other task's result already seen; hetero_regression, vae_digits and
resmlp_friedman were written after that, by a session that ran no search on them: they are
the clean hold-out of the range and the rung rule together. mf_ratings, flow_moons and
tcn_forecast were written last, after a two-finalist plan had been tried on the fourteen
others and turned down (its runs in ``tune_study_two_finalists/``, compared in the report), by
a session that ran no search on them and saw no result: the hold-out of tune as it is.

Runs in chunks (each task x seed is cached in ``studies/results/tune_study/``, the grid
separately in ``grid/``, as it does not depend on tune), then writes
``studies/results/tune.md``:

    python studies/tune_study.py --tasks digits_mlp --seeds 0 1 2
    python studies/tune_study.py --report
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch

import autoclip
from autoclip.objectives import final_loss
from autoclip.task import bundled_studies
from autoclip.training import train
from autoclip_studies import noise_floor, rung_study

GRID = [float(m) for m in np.geomspace(0.01, 100, 12)]
TASKS = tuple(sorted(bundled_studies()))  # every bundled study (the autoclip.studies group)
DESIGN = ("relu_rnn", "lstm_adding", "digits_mlp")  # the rung rule was designed on these
# written after the range rule, and (rung_study.FRESH) after the two-finalist trial
FRESH = ("hetero_regression", "vae_digits", "resmlp_friedman", *rung_study.FRESH)
HERE = Path(__file__).parent / "results"
CACHE = HERE / "tune_study"
TWO_FINALISTS = HERE / "tune_study_two_finalists"  # the plan tried and not adopted
RESULTS = HERE / "tune.md"


def run_one(name: str, seed: int) -> dict:
    """The grid and tune on one task and seed (cached as JSON)."""
    make_task = importlib.import_module(f"autoclip_studies.{name}").make_task
    task = make_task(seed=seed)
    grid_file = CACHE / "grid" / f"{name}-{seed}.json"  # the grid does not change with tune
    replayed = HERE / "rung_study" / f"{name}-{seed}.json"  # the same grid, curves kept
    if grid_file.exists():
        cached = json.loads(grid_file.read_text())
        grid, grid_s = {float(m): v for m, v in cached["grid"].items()}, cached["seconds"]
    elif replayed.exists():
        cached = json.loads(replayed.read_text())["grid"]
        grid, grid_s = {m: cached[repr(m)]["final"] for m in GRID}, None
    else:
        started = time.time()
        grid = {m: final_loss(train(task, {"name": "norm", "max_norm": m})) for m in GRID}
        grid_s = time.time() - started
        grid_file.parent.mkdir(parents=True, exist_ok=True)
        grid_file.write_text(json.dumps({"grid": grid, "seconds": grid_s}))
    started = time.time()
    result = autoclip.tune(make_task(seed=seed), seed=seed)
    tune_s = time.time() - started
    chosen = result.chosen
    return {
        "task": name,
        "seed": seed,
        "steps": task.steps,
        "grid": grid,
        "grid_steps": len(GRID) * task.steps,
        "grid_seconds": grid_s,
        "tune_loss": None if chosen is None else chosen.values[0],
        "tune_config": None if chosen is None else chosen.config,
        "tune_label": "nothing" if chosen is None else chosen.label,
        "tune_steps": result.train_steps,
        "tune_cost": result.cost,
        "tune_seconds": tune_s,
        "warning": result.warning,
        "recommended": result.proposal.recommended.describe(),
        "measured": result.proposal.response is not None,  # issue-10's measured suggest
    }


def _role(name: str) -> str:
    return "design" if name in DESIGN else "**fresh**" if name in FRESH else "held out"


def _by_task(folder: Path) -> dict[str, list[dict]]:
    """The cached runs of ``folder``, by task, in seed order."""
    by_task: dict[str, list[dict]] = {}
    for p in sorted(folder.glob("*.json")):
        r = json.loads(p.read_text())
        by_task.setdefault(r["task"], []).append(r)
    for rs in by_task.values():
        rs.sort(key=lambda r: r["seed"])
    return by_task


def _score(rs: list[dict]) -> tuple[str, dict[str, float], float, float, float]:
    """(the grid's best threshold, the grid's means, tune's mean final loss, its ratio to the
    best mean, its mean share of the grid's steps) over the seeds of ``rs``."""
    means = {m: statistics.mean(r["grid"][str(m)] for r in rs) for m in map(str, GRID)}
    best_m = min(means, key=means.get)
    losses = [r["tune_loss"] for r in rs]
    tune_mean = statistics.mean(x if x is not None else float("inf") for x in losses)
    spent = statistics.mean(r["tune_steps"] / r["grid_steps"] for r in rs)
    return best_m, means, tune_mean, tune_mean / means[best_m], spent


def _met(ratio: float, spent: float, n_seeds: int) -> bool:
    return ratio <= 1.05 and spent <= 0.25 and n_seeds >= 3


def two_finalists(by_task: dict[str, list[dict]]) -> list[str]:
    """The two-finalist plan's runs against the adopted plan's: what it was, what it did,
    and the table, task by task."""
    tried = _by_task(TWO_FINALISTS)
    rows, met, far = [], [0, 0], []
    names = sorted(set(tried) & set(by_task))
    for name in names:
        _, _, _, r1, s1 = _score(by_task[name])
        _, _, _, r2, s2 = _score(tried[name])
        met[0] += _met(r1, s1, len(by_task[name]))
        met[1] += _met(r2, s2, len(tried[name]))
        if r2 > 1.2 * r1:
            far.append(name)
        rows.append(f"| {name} | {r1:.3f} | {s1:.1%} | {r2:.3f} | {s2:.1%} |")
    return [
        "## Two finalists (tried, not adopted)",
        "",
        "The bracket's last decision, one of three at a third of the run, is where the misses "
        "come from; judging two finalists at full length would remove it, but two fit in a "
        "quarter of the grid only with the rungs at a 27th and a fifth of the run "
        "(`Plan.make(steps, (27, 5), finalists=2)`; [rung_study.md](rung_study.md) replays "
        "the shapes). Chosen on replays of the six tasks with a noise floor under 2% "
        f"({', '.join(rung_study.STEADY)}), the others in view, then run with the real tune "
        f"on the {len(names)} tasks of the time (cached in "
        f"studies/results/tune_study_two_finalists/). It met the goal on {met[1]} of "
        f"{len(names)} where one finalist meets it on {met[0]}, but it was more than 1.2x "
        f"worse on {len(far)} ({', '.join(far)}) and its geometric mean was worse: a first "
        "rung at a 27th of the run ranks the initial descent (on ar_forecast, seed 0, the "
        "three places after it went to 34, 81 and 191, loose thresholds that descend "
        "fastest and end 2-4x worse than the 1.1-6 the ladder also held). Not adopted; the "
        "fresh tasks above were written after this decision.",
        "",
        "| task | one finalist (adopted) | steps | two finalists (tried) | steps |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]


def report(argv_used: str) -> str:
    rows, lines = [], []
    met_all = True
    tally: list[tuple[str, bool, bool]] = []  # (task, met, the threshold matters)
    by_task = _by_task(CACHE)
    for name, rs in by_task.items():
        best_m, means, tune_mean, ratio, spent = _score(rs)
        losses = [r["tune_loss"] for r in rs]
        met = _met(ratio, spent, len(rs))
        met_all &= met
        # the seed-to-seed standard error of the grid's best mean: how far a ratio is noise
        at_best = [r["grid"][best_m] for r in rs]
        noise = statistics.stdev(at_best) / len(at_best) ** 0.5 / means[best_m]
        floor = noise_floor.seed_mean_se(name)
        spread = max(means.values()) / means[best_m]  # > 1.05: the threshold matters
        tally.append((name, met, spread > 1.05))
        rows.append(
            f"| {name} ({_role(name)}) | {len(rs)} | "
            f"{float(best_m):.3g} | {means[best_m]:.4g} (±{noise:.0%}) | {spread:.3g} | "
            f"{'-' if floor is None else f'±{floor:.0%}'} | "
            f"{', '.join('-' if x is None else f'{x:.4g}' for x in losses)} | {tune_mean:.4g} "
            f"| {ratio:.3f} | {spent:.1%} | {'met' if met else '**missed**'} |"
        )
        for r in rs:
            cost = ", ".join(f"{k} {v}" for k, v in r["tune_cost"].items())
            lines.append(
                f"- {name} seed {r['seed']}: chose {r['tune_label']} (probe recommended "
                f"{r['recommended']}, "
                f"{'measured suggest' if r.get('measured') else 'statistics-only proposal'}); "
                f"{r['tune_steps']} steps of the grid's {r['grid_steps']} "
                f"({cost}); {r['tune_seconds']:.0f} s"
                + (f" vs the grid's {r['grid_seconds']:.0f} s" if r["grid_seconds"] else "")
                + (f"; WARNING {r['warning']}" if r["warning"] else "")
            )
            lines.append(
                "  - grid: " + ", ".join(f"{float(m):.3g} -> {v:.4g}" for m, v in r["grid"].items())
            )
    head = [
        "# tune() with its defaults against a 12-point fixed-threshold grid",
        "",
        f"- command: `{argv_used}` (each task x seed run by "
        "`python studies/tune_study.py --tasks NAME --seeds 0 1 2`, cached in "
        "studies/results/tune_study/)",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"optuna {optuna.__version__}, autoclip {autoclip.__version__}",
        f"- grid: norm clipping at {', '.join(f'{m:.3g}' for m in GRID)}, each the task's full "
        "length on the seed; tune: `autoclip.tune(task, seed=seed)`, defaults otherwise",
        "- goal per task: tune's mean final loss <= 1.05x the grid's best threshold's mean, "
        "at <= 25% of the grid's optimizer steps (probe, baselines and every rung counted)",
        "- design vs judgement: the rung rule was designed on replayed brackets of "
        "relu_rnn, lstm_adding and digits_mlp (`studies/rung_study.py`, "
        "[rung_study.md](rung_study.md)); its tie-break between equally clipping clippers was "
        "added after looking at sgd_transformer and char_lstm seed 0; the other tasks and "
        "seeds were judged with the rule fixed, and gru_classify, conv_digits and "
        "deep_regression were written after it was fixed (fresh held-out models); the search "
        "range (1.5 decades either side of the measured value) was set on the design tasks "
        "with every other result above already seen, and hetero_regression, vae_digits and "
        "resmlp_friedman (**fresh**) were written after it, by a session that ran no search "
        "on them: the clean hold-out of the range and the rule together; mf_ratings, "
        "flow_moons and tcn_forecast (**fresh**) later still, after the two-finalist plan "
        "below was tried and turned down, by a session that ran no search on them and saw "
        "no result: the hold-out of everything tune does now",
        "",
        "- machines: the grids are cached (studies/results/tune_study/grid/ and rung_study/); "
        "the first eleven tasks' grids were trained on an earlier machine, whose CPU rounds "
        "differently, and tune ran on this one: on a chaotic task the same configuration "
        "then ends elsewhere (noise_floor.md lists both runs of each grid point)",
        "- noise floor: the standard error of a 3-seed mean at the grid's best threshold when "
        "that threshold changes by one part in a million (a different draw of the same "
        "configuration; [noise_floor.md](noise_floor.md), `python studies/noise_floor.py`): "
        "tune's ratio carries that noise even where it chose the grid's best point",
        "",
        "- grid worst / best: the grid's worst mean over its best; where it is under 1.05 "
        "every threshold meets the goal, and the task says nothing of the search",
        "",
        "| task | seeds | grid best max_norm | grid best mean (± SE) | grid worst / best "
        "| noise floor | tune final loss per seed | tune mean | tune / grid | steps vs grid "
        "| goal |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    held = [(n, m) for n, m, _ in tally if n not in DESIGN and n not in FRESH]
    fresh = [(n, m) for n, m, _ in tally if n in FRESH]
    verdict = (
        "All tasks met the goal."
        if met_all
        else f"The goal was met on {sum(m for _, m, _ in tally)} of {len(tally)} tasks "
        f"({sum(m for _, m in held)} of the {len(held)} held out: "
        f"{', '.join(n for n, m in held if m) or 'none'}; {sum(m for _, m in fresh)} of the "
        f"{len(fresh)} fresh: {', '.join(n for n, m in fresh if m) or 'none'}); the rows "
        "marked **missed** did not meet it. Where the threshold matters (grid worst / best "
        f"over 1.05: {sum(i for _, _, i in tally)} tasks) it was met on "
        f"{sum(m and i for _, m, i in tally)}: "
        f"{', '.join(n for n, m, i in tally if m and i) or 'none'}; the others where it "
        f"was met ({', '.join(n for n, m, i in tally if m and not i) or 'none'}) are "
        "met by any threshold of the grid. (± is the seed-to-seed standard error of the "
        "grid's best mean; the noise floor is what the same configuration's mean moves by "
        "under a one-in-a-million change: a ratio within either of 1.05 is as much noise as "
        "the search.)"
    )
    tried = two_finalists(by_task)
    return "\n".join([*head, *rows, "", verdict, "", *tried, "", "## Runs", "", *lines, ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="*", default=[])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--report", action="store_true", help="write tune.md from the cache")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    CACHE.mkdir(parents=True, exist_ok=True)
    for name in args.tasks:
        if name not in TASKS:
            p.error(f"unknown task {name!r}; choose from {TASKS}")
        for seed in args.seeds:
            out = run_one(name, seed)
            (CACHE / f"{name}-{seed}.json").write_text(json.dumps(out, indent=1))
            print(
                f"{name} seed {seed}: tune {out['tune_loss']} ({out['tune_label']}), grid best "
                f"{min(out['grid'].values()):.4g}, steps {out['tune_steps']}/{out['grid_steps']}",
                flush=True,
            )
    if args.report:
        text = report("python studies/tune_study.py --report")
        RESULTS.write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
