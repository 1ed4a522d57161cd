"""Does one ``autoclip.suggest`` call beat no clipping and ``clip_grad_norm_(..., 1.0)``?

On the exploding ReLU RNN (``relu_rnn``), for each seed: build the task's model and optimizer,
call ``autoclip.suggest`` on them (a 100-step warm-up; everything is restored afterwards),
print what the probe saw (the spikes, the layers they come from) and what it proposes, then
train three arms from the same initial weights for the task's full budget:

* ``none``: no clipping;
* ``norm 1.0``: ``clip_grad_norm_(params, 1.0)`` (``NormClip(1.0)``, bit-identical to it);
* ``suggest``: ``proposal.clipper()``, as returned (warm-started if adaptive);
* ``quantile candidate``: for context, the proposal's adaptive candidate
  (``proposal.clipper("quantile")``, warm-started), which it recommends only for models
  without spikes.

The metric is the held-out MSE after training (predicting 0 scores 2/3); a run that diverges
scores its divergence. The table goes to stdout and to ``studies/results/probe_rnn.md``, with
the command, the date and the versions in its header.

    python studies/probe_rnn.py            # 3 seeds, about a minute on 2 CPU cores
    python studies/probe_rnn.py --seeds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
import torch

import autoclip
from autoclip.propose import suggest
from autoclip.training import train
from autoclip_studies.relu_rnn import make_task

RESULTS = Path(__file__).resolve().parent / "results" / "probe_rnn.md"


def _score(log) -> float:
    return log.eval_loss if log.eval_loss is not None else math.inf


def _cell(log) -> str:
    if log.diverged:
        return f"diverged at step {log.steps_run}"
    return f"{log.eval_loss:.4f}"


def run(seeds: int, probe_steps: int, steps: int | None) -> tuple[list[dict], list[str]]:
    rows, notes = [], []
    for seed in range(seeds):
        task = make_task(seed)
        if steps is not None:
            task = dataclasses.replace(task, steps=steps)
        t0 = time.perf_counter()
        model, optimizer = task.build()
        proposal = suggest(model, optimizer, task.compute_loss, task.batches, steps=probe_steps)
        probe_s = time.perf_counter() - t0
        st = proposal.stats
        spike_from = ", ".join(f"{n} {s:.0%}" for n, s in st.spike_layers[:2]) or "-"
        notes.append(
            f"seed {seed}: probe {probe_s:.1f} s; spikes at steps {list(st.spike_steps)} "
            f"({st.spike_rate:.0%}, ~{st.spike_factor:.3g}x the local level), excess from "
            f"{spike_from}; recommended {proposal.recommended.describe()}"
        )
        print(notes[-1], flush=True)
        logs = {
            "none": train(task, None),
            "norm 1.0": train(task, autoclip.NormClip(1.0)),
            "suggest": train(task, proposal.clipper()),
            # for context: the adaptive alternative the proposal did not recommend here
            "quantile candidate": train(task, proposal.clipper("quantile")),
        }
        rows.append({"seed": seed, "proposal": proposal, "logs": logs})
        print(
            "  final held-out MSE: " + ", ".join(f"{k} {_cell(v)}" for k, v in logs.items()),
            flush=True,
        )
    return rows, notes


def table(rows: list[dict]) -> str:
    arms = list(rows[0]["logs"])
    out = [
        "| seed | " + " | ".join(arms) + " | suggested clipper | clipped (suggest) |",
        "|---|" + "---|" * (len(arms) + 2),
    ]
    for r in rows:
        cells = [_cell(r["logs"][a]) for a in arms]
        clipped = f"{r['logs']['suggest'].clipped_fraction:.0%}"
        out.append(
            f"| {r['seed']} | "
            + " | ".join(cells)
            + f" | `{r['proposal'].recommended.describe()}` | {clipped} |"
        )
    means = []
    for a in arms:
        scores = [_score(r["logs"][a]) for r in rows]
        if all(math.isfinite(s) for s in scores):
            sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
            means.append(f"{statistics.mean(scores):.4f} ± {sd:.4f}")
        else:
            means.append(f"{sum(not math.isfinite(s) for s in scores)} diverged")
    out.append("| mean ± sd | " + " | ".join(means) + " | | |")
    return "\n".join(out)


def verdict(rows: list[dict]) -> str:
    s = [_score(r["logs"]["suggest"]) for r in rows]
    lines = []
    for base in ("none", "norm 1.0"):
        b = [_score(r["logs"][base]) for r in rows]
        wins = sum(x < y for x, y in zip(s, b, strict=True))
        better_mean = (
            statistics.mean(s) < statistics.mean(b)
            if all(map(math.isfinite, s + b))
            else sum(map(math.isfinite, s)) >= sum(map(math.isfinite, b))
        )
        lines.append(
            f"- suggest vs {base}: lower final loss on {wins} of {len(rows)} seeds; "
            f"lower mean: {'yes' if better_mean else 'no'}."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--probe-steps", type=int, default=100)
    parser.add_argument("--steps", type=int, default=None, help="training steps (task default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: reproducible)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    rows, notes = run(args.seeds, args.probe_steps, args.steps)
    elapsed = time.perf_counter() - t0
    body = table(rows)
    print()
    print(body)
    print(verdict(rows))

    task = make_task(0)
    steps = args.steps or task.steps
    command = "python studies/probe_rnn.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [
        "# suggest() on the exploding ReLU RNN",
        "",
        f"- command: `{command.strip()}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, numpy "
        f"{np.__version__}, scikit-learn {sklearn.__version__}, autoclip {autoclip.__version__}",
        f"- machine: {platform.machine()}, {args.threads} torch thread(s); {elapsed:.0f} s in all",
        f"- task: `relu_rnn` ({task.description}); {steps} SGD steps per arm; metric: held-out "
        "MSE after training (predicting 0 scores 0.667); probe: "
        f"{args.probe_steps} warm-up steps",
        "",
        body,
        "",
        verdict(rows),
        "",
        "What the probe reported (spike steps are warm-up steps; the layer shares are of the "
        "squared norm the spikes added above each layer's typical value):",
        "",
        *[f"- {n}" for n in notes],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
