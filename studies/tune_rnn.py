"""Search vs grid on the exploding ReLU RNN: does tune() find a grid-quality threshold for less?

What it measures (issue 4's acceptance), on ``relu_rnn``:

1. A 12-point grid of fixed norm thresholds, log-spaced over 0.01..100, each trained for the
   task's full budget on the tuning seed: the grid's cost is 12 full runs.
2. ``autoclip.tune`` on the same tuning seed, with trials a quarter of the full length
   (a short-horizon proxy) and enough of them to stay within a quarter of the grid's
   training steps, probe included, baselines off.
3. Every contender re-trained for the full budget on evaluation seeds it never saw: the
   tuned configuration, the grid's best threshold, the proposal alone (``suggest``), no
   clipping and ``clip_grad_norm_(..., 1.0)``.

Goal: the tuned configuration's mean held-out loss is within 2% of the grid's best (or
better), at most a quarter of the grid's training steps spent. The script prints the table
and writes it to ``studies/results/tune_rnn.md``; it says plainly when the goal is not met.
This is the evidence of the short-horizon bias (trials run with ``fidelity=False``); the
multi-fidelity search that answers it is measured by ``studies/tune_study.py``.

    python studies/tune_rnn.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import datetime
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
from autoclip.training import train
from autoclip_studies.relu_rnn import make_task

GRID = np.geomspace(0.01, 100, 12)  # 12 thresholds, 4 decades around the usual 1.0
TUNE_SEED = 100  # the search and the grid see this seed only; evaluation uses 0..N-1
SHORT = 4  # trials train 1/SHORT of the full budget
RESULTS = Path(__file__).parent / "results" / "tune_rnn.md"


def evaluate(config: dict | None, seeds: list[int], warm=None) -> list[float]:
    """Held-out loss of ``config`` trained for the full budget on each seed."""
    out = []
    for s in seeds:
        task = make_task(seed=s)
        clipper = None if config is None else autoclip.create_clipper(**config)
        if clipper is not None and warm is not None:
            clipper.warm_start(warm)
        out.append(final_loss(train(task, clipper)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="evaluation seeds 0..N-1")
    p.add_argument("--short", type=int, default=SHORT, help="trials train 1/SHORT of the budget")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.time()
    seeds = list(range(args.seeds))
    tune_task = make_task(seed=TUNE_SEED)
    full = tune_task.steps

    # 1. The grid, on the tuning seed.
    grid_scores = {}
    for m in GRID:
        grid_scores[float(m)] = final_loss(train(tune_task, {"name": "norm", "max_norm": m}))
    best_m = min(grid_scores, key=grid_scores.get)
    grid_steps = len(GRID) * full

    # 2. The search, within a quarter of the grid's steps.
    probe_steps = 100
    short = full // args.short
    n_trials = (grid_steps // 4 - probe_steps) // short
    result = autoclip.tune(
        tune_task,
        n_trials=n_trials,
        steps=short,
        probe_steps=probe_steps,
        baselines=False,
        fidelity=False,  # every trial at the short length: the short-horizon proxy itself
    )
    proposal = result.proposal

    # 3. Full-length evaluation on unseen seeds.
    rows = {
        "tune": (result.best_config, result.train_steps, proposal.warm_norms),
        f"grid best (norm {best_m:.3g})": ({"name": "norm", "max_norm": best_m}, grid_steps, None),
        "suggest (proposal alone)": (
            proposal.recommended.config,
            probe_steps,
            proposal.warm_norms,
        ),
        "no clipping": (None, 0, None),
        "clip_grad_norm_ 1.0": ({"name": "norm", "max_norm": 1.0}, 0, None),
    }
    scores = {name: evaluate(cfg, seeds, warm) for name, (cfg, _, warm) in rows.items()}
    means = {k: statistics.mean(v) for k, v in scores.items()}
    grid_name = next(k for k in rows if k.startswith("grid best"))
    ratio = means["tune"] / means[grid_name]
    spent = result.train_steps / grid_steps
    met = ratio <= 1.02 and spent <= 0.25

    lines = [
        "# tune() against a 12-point threshold grid on the exploding ReLU RNN",
        "",
        f"- command: `python studies/tune_rnn.py --seeds {args.seeds} --short {args.short}"
        + ("" if args.out == RESULTS else f" --out {args.out}")
        + "`",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}; "
        f"{(time.time() - started) / 60:.1f} min",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"optuna {optuna.__version__}, autoclip {autoclip.__version__}",
        f"- grid: norm clipping at {', '.join(f'{m:.3g}' for m in GRID)}, {full} steps each on "
        f"seed {TUNE_SEED} ({grid_steps} steps)",
        f"- tune: {n_trials} trials of {short} steps on seed {TUNE_SEED}, probe {probe_steps} "
        f"steps, {result.train_steps} steps in all; chose {result.chosen.label} "
        f"({result.rule})",
        f"- evaluation: every row retrained for {full} steps on seeds {seeds}; held-out MSE "
        "(predicting 0 scores 0.667)",
        "",
        "| configuration | held-out loss per seed | mean | tuning steps |",
        "|---|---|---:|---:|",
    ]
    for name, (cfg, cost, _) in rows.items():
        per = ", ".join(f"{x:.4g}" for x in scores[name])
        label = autoclip.search.describe_config(cfg)
        lines.append(f"| {name}: {label} | {per} | {means[name]:.4g} | {cost} |")
    lines += [
        "",
        "Grid on the tuning seed: "
        + ", ".join(f"{m:.3g} -> {v:.3g}" for m, v in grid_scores.items()),
        "",
        f"Goal: tune within 2% of the grid's best mean loss with at most 25% of its steps. "
        f"Measured: tune/grid = {ratio:.3f}, steps {spent:.1%} of the grid's: "
        f"**{'met' if met else 'NOT met'}**.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
