"""How far a task's final loss moves under a perturbation no search could see: its noise floor.

tune_study.py judges ``tune`` to within 5% of the best threshold of a grid. On some tasks the
final loss is chaotic in the training run itself: the same threshold, the same seed, changed
in its seventh significant digit (or run on another CPU, whose vector kernels round
differently), ends in another place. Then a 5% comparison on three seeds is a comparison of
draws, whatever the search does. This script measures how large those draws are:

for each task and seed, the grid's best threshold ``m`` (the best mean over the seeds, read from
``tune_study``'s cached grid) is trained for the full length at ``m * (1 + k * 1e-6)`` for
k = 0 .. K-1. Training is deterministic, so the spread of those K final losses is the loss's
sensitivity to a change of one part in a million: nothing a rung, a sampler or a user could
tell apart. Per task it reports the spread (coefficient of variation over the K runs, the
median over seeds), and the standard error that spread gives a mean over the seeds: the
noise that any ``tune / grid`` ratio of tune_study carries by itself, even for a search that
chose the grid's best threshold every time.

    python studies/noise_floor.py --tasks digits_mlp relu_rnn     # cached per task x seed
    python studies/noise_floor.py --report                        # writes noise_floor.md

The CPU's vector capability (``torch.backends.cpu.get_cpu_capability()``) is stored with every
run: the k = 0 run repeats the cached grid's point, and where the grid came from a machine with
other kernels the two differ by such a draw too.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import platform
import statistics
import sys
from pathlib import Path

import optuna
import torch

import autoclip
from autoclip.objectives import final_loss
from autoclip.task import bundled_studies
from autoclip.training import train

HERE = Path(__file__).parent / "results"
GRID_CACHE = HERE / "tune_study"  # tune_study's per task x seed files carry the grid
CACHE = HERE / "noise_floor"
RESULTS = HERE / "noise_floor.md"
K = 4  # perturbed runs per task and seed
EPS = 1e-6  # relative change of the threshold between them
GOAL = 0.05  # tune_study's goal: within 5% of the grid's best


def cpu() -> str:
    return f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"


def best_threshold(name: str) -> tuple[float, dict[int, float]]:
    """The grid's best threshold by the mean over the cached seeds, and each seed's loss there."""
    runs = [json.loads(p.read_text()) for p in sorted(GRID_CACHE.glob(f"{name}-*.json"))]
    if not runs:
        raise SystemExit(
            f"no grid for {name!r} in {GRID_CACHE}: run studies/tune_study.py --tasks {name}"
        )
    keys = list(runs[0]["grid"])
    means = {m: statistics.mean(r["grid"][m] for r in runs) for m in keys}
    best = min(means, key=means.get)
    return float(best), {r["seed"]: r["grid"][best] for r in runs}


def run_one(name: str, seed: int) -> dict:
    make_task = importlib.import_module(f"autoclip_studies.{name}").make_task
    m, cached = best_threshold(name)
    finals = [
        final_loss(train(make_task(seed=seed), {"name": "norm", "max_norm": m * (1 + k * EPS)}))
        for k in range(K)
    ]
    return {
        "task": name,
        "seed": seed,
        "max_norm": m,
        "finals": finals,
        "grid_cached": cached.get(seed),
        "cpu": cpu(),
    }


def _cv(xs: list[float]) -> float:
    mean = statistics.mean(xs)
    return statistics.stdev(xs) / abs(mean) if len(xs) > 1 and mean else math.inf


def summary(rs: list[dict]) -> dict:
    """Per task: the median over seeds of the K runs' coefficient of variation, and the
    standard error that the within-seed spread gives a mean over the seeds (relative)."""
    cvs = [_cv(r["finals"]) for r in rs]
    mean = statistics.mean(statistics.mean(r["finals"]) for r in rs)
    var = statistics.mean(statistics.variance(r["finals"]) for r in rs)
    return {"cv": statistics.median(cvs), "se": math.sqrt(var / len(rs)) / abs(mean)}


def seed_mean_se(name: str) -> float | None:
    """The relative standard error of a seed mean measured for ``name`` (None where fewer than
    two seeds have run)."""
    rs = load(name).get(name, [])
    return summary(rs)["se"] if len(rs) >= 2 else None


def load(name: str = "*") -> dict[str, list[dict]]:
    """The cached runs of task ``name`` (every task by default), by task."""
    by_task: dict[str, list[dict]] = {}
    for p in sorted(CACHE.glob(f"{name}-*.json")):
        r = json.loads(p.read_text())
        by_task.setdefault(r["task"], []).append(r)
    return by_task


def report() -> str:
    rows = []
    runs = load()
    for name, rs in sorted(runs.items()):
        rs.sort(key=lambda r: r["seed"])
        s = summary(rs)
        per_seed = "; ".join(
            ", ".join(f"{x:.4g}" for x in r["finals"])
            + (f" (grid {r['grid_cached']:.4g})" if r["grid_cached"] is not None else "")
            for r in rs
        )
        beyond = "**yes**" if 2 * s["se"] > GOAL else "no"
        rows.append(
            f"| {name} | {rs[0]['max_norm']:.3g} | {len(rs)} | {s['cv']:.1%} | {s['se']:.1%} "
            f"| {beyond} | {per_seed} |"
        )
    cpus = sorted({r["cpu"] for rs in runs.values() for r in rs})
    head = [
        "# The noise floor: final loss under a one-in-a-million change of the threshold",
        "",
        "- command: `python studies/noise_floor.py --report` (each task by "
        "`python studies/noise_floor.py --tasks NAME`, cached in studies/results/noise_floor/)",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"optuna {optuna.__version__}, autoclip {autoclip.__version__}; CPU {', '.join(cpus)}",
        f"- each task x seed: the grid's best max_norm m (best mean over the seeds, "
        f"tune_study's grid), trained for the full length at m x (1 + k x {EPS:g}), "
        f"k = 0..{K - 1}",
        "- spread: the coefficient of variation of those runs' final losses (median over "
        "seeds); SE of a seed mean: the standard error that spread alone gives a mean over the "
        "seeds, relative to it; 'hides 5%': twice that SE is more than the 5% of "
        "tune_study's goal, so a ratio to the grid cannot tell 1.05x from 1.00x there",
        "- (grid ...): the loss the cached grid holds for m on that seed (another machine's "
        "run where its CPU differed; the first of the four runs here repeats it)",
        "",
        "| task | m | seeds | spread | SE of a seed mean | hides 5% | final losses per seed |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    return "\n".join([*head, *rows, ""])


def main(argv: list[str] | None = None) -> int:
    tasks = tuple(sorted(bundled_studies()))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="*", default=[])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--report", action="store_true", help="write noise_floor.md from the cache")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    CACHE.mkdir(parents=True, exist_ok=True)
    for name in args.tasks:
        if name not in tasks:
            p.error(f"unknown task {name!r}; choose from {tasks}")
        for seed in args.seeds:
            out = run_one(name, seed)
            (CACHE / f"{name}-{seed}.json").write_text(json.dumps(out, indent=1))
            print(f"{name} seed {seed}: m {out['max_norm']:.3g} -> {out['finals']}", flush=True)
    if args.report:
        text = report()
        RESULTS.write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
