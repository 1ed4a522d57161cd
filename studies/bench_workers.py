"""Trials per minute with 1 and 2 local worker processes, measured in one run.

Run: ``python studies/bench_workers.py`` (``--help`` for options). For each storage (a journal
file, and PostgreSQL when a server is available) the same search runs twice, each time in a
fresh study: ``tune(..., workers=1)``, then ``tune(..., workers=2)``; that pair is repeated
``--rounds`` times and the summary takes medians. It prints trials per minute and the ratio
2 workers / 1 worker; the goal is >= 1.8x on a 2-core machine, with trials of about a second.
Trials train for the full length (``fidelity=False``): every trial then does the same work,
so trials per minute compare like with like (with successive halving most trials stop at a
rung, and a bracket's trials run one at a time inside one worker).

Two rates per run:

* **trials/min (trials)**: trials over the span from the first trial's start to the last
  trial's end, read back from the study: the search's steady-state throughput.
* **trials/min (wall)**: trials over the whole ``tune`` call, including the probe, the
  worker processes' start-up (a fresh Python importing torch) and the storage set-up.

A control opens and closes every round and says what the machine can give a second process
at all right then: the bare training loop (no search, no Optuna) in 2 processes versus 1, the
round's figure the mean of the two. On an idle
2-core machine it is close to 2x; when other work shares the cores it is lower (Linux shares
CPU time fairly between login sessions, so a busy neighbour caps what a second worker adds),
and the workers' ratio of that round is to be read against it: the last column, the
workers' ratio over the control's, is the share of that gain that the search keeps.

The task (``bench_task``, below) trains a small MLP for a fixed number of steps at a learning
rate too low to diverge, so every trial costs about the same whatever clipper it samples and
the two runs do comparable work. PostgreSQL: ``--postgres URL`` uses your server; otherwise,
where the server binaries exist, the script starts a throwaway one on 127.0.0.1 (the same
helper the tests use, ``tests/_postgres.py``); ``--no-postgres`` skips it. Results are
printed and written as Markdown to ``studies/results/bench_workers.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import autoclip

RESULTS = Path(__file__).resolve().parent / "results" / "bench_workers.md"
TARGET = f"{Path(__file__).resolve()}:bench_task"  # a file target, so workers can load it
WIDTH = 128  # ~35k parameters: a trial is a few hundred small CPU steps
STEPS = 1400  # about a second per trial on one core
# Per run: enough trials a worker that the run's two ends are a small share of it: the
# spawned worker's first trial starts up to half a trial late (a fresh Python importing
# torch, when the probe is shorter than that), and one worker's last trial ends up to half a
# trial after the other's; over 8 trials a worker that is ~12% of the span, over 16 ~6%.
TRIALS = 32
ROUNDS = 3  # per storage; other work on the machine comes and goes, so medians of rounds


def bench_task(steps: int = STEPS) -> autoclip.Task:
    """A 3-layer MLP on fixed synthetic regression batches, SGD at a safe learning rate."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g)  # [512, 64]
    y = torch.tanh(x @ torch.randn(64, 1, generator=g))  # [512, 1]
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 512, 64)]  # 8 x [64, 64]

    def model_fn() -> nn.Module:
        return nn.Sequential(
            nn.Linear(64, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 1)
        )

    return autoclip.Task(
        model_fn=model_fn,
        optimizer_fn=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
        loss_fn=lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1]),
        batches=batches,
        seed=0,
        steps=steps,
        name="bench_workers",
        description="fixed-cost MLP for the worker benchmark",
    )


@dataclass(frozen=True)
class Run:
    storage: str
    workers: int
    trials: int
    span_s: float  # first trial start -> last trial end
    wall_s: float  # the whole tune() call

    @property
    def per_min(self) -> float:
        return 60.0 * self.trials / self.span_s

    @property
    def per_min_wall(self) -> float:
        return 60.0 * self.trials / self.wall_s


def measure(storage_label: str, storage: str, workers: int, trials: int, steps: int) -> Run:
    import optuna

    from autoclip.search import open_storage, tune

    name = f"bench-{workers}w-{uuid.uuid4().hex[:8]}"
    # tune(workers=2) pins every worker to one torch thread; do the same for one worker, so
    # that the ratio measures processes, not OpenMP threads (which, on a model this small,
    # mostly spin and wait, and on a busy machine slow a run down many times over).
    torch.set_num_threads(1)
    start = time.perf_counter()
    tune(
        TARGET,
        n_trials=trials,
        steps=steps,
        storage=storage,
        study_name=name,
        workers=workers,
        probe_steps=20,
        baselines=False,
        fidelity=False,
    )
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    return Run(storage_label, workers, len(done), (last - first).total_seconds(), wall)


def _loop(steps: int, out) -> None:
    """The control: the task's training loop alone (no autoclip search, no Optuna)."""
    from autoclip.training import train

    torch.set_num_threads(1)
    task = bench_task(steps)
    train(task, None, steps=20)  # warm-up: first-call allocations
    start = time.perf_counter()
    train(task, None, steps=steps)
    out.put(time.perf_counter() - start)


def control(steps: int) -> float:
    """Steps per second of 2 processes over 1, each running the bare training loop."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    rate = {}
    for n in (1, 2):
        out = ctx.Queue()
        procs = [ctx.Process(target=_loop, args=(steps, out)) for _ in range(n)]
        for p in procs:
            p.start()
        times = [out.get() for _ in procs]
        for p in procs:
            p.join()
        rate[n] = n * steps / max(times)
    return rate[2] / rate[1]


@contextlib.contextmanager
def postgres(url: str | None, enabled: bool) -> Iterator[tuple[str | None, str]]:
    """(a database URL or None, a note on where it came from)."""
    if not enabled:
        yield None, "skipped (--no-postgres)"
        return
    if url:
        yield url, "given with --postgres"
        return
    # The throwaway-server helper the tests use, loaded from its file: sys.path stays as it
    # was, so nothing of tests/ can shadow an installed module for the rest of the run.
    helper = Path(__file__).resolve().parent.parent / "tests" / "_postgres.py"
    if not helper.is_file():
        yield None, "no tests/_postgres.py in this checkout; pass --postgres URL"
        return
    spec = importlib.util.spec_from_file_location("_autoclip_bench_postgres", helper)
    _postgres = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = _postgres  # its dataclasses look their module up there
    spec.loader.exec_module(_postgres)
    reason = _postgres.skip_reason()
    if reason:
        yield None, f"skipped: {reason}"
        return
    with _postgres.postgres_server() as server:
        yield server.create_database("bench"), "throwaway local server (tests/_postgres.py)"


def versions() -> str:
    import optuna

    return (
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"optuna {optuna.__version__}, autoclip {autoclip.__version__}"
    )


def machine(load_before: tuple[float, float, float]) -> str:
    """The machine, and how busy it was (other processes share the cores being measured)."""
    before = "/".join(f"{x:.1f}" for x in load_before)
    after = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} "
        f"{platform.release()}; load average (1/5/15 min) {before} before, {after} after; "
        "one torch thread per worker process"
    )


@dataclass(frozen=True)
class Round:
    """One storage, measured back to back: the control, 1 worker, 2 workers, the control
    again (``control`` is the mean of the two)."""

    control: float
    one: Run
    two: Run

    @property
    def ratio(self) -> float:
        return self.two.per_min / self.one.per_min

    @property
    def ratio_wall(self) -> float:
        return self.two.per_min_wall / self.one.per_min_wall

    @property
    def of_control(self) -> float:
        return self.ratio / self.control


def run_rounds(label: str, storage_for, args) -> list[Round]:
    rounds = []
    for i in range(args.rounds):
        before = control(args.control_steps)
        one = measure(label, storage_for(i, 1), 1, args.trials, args.steps)
        two = measure(label, storage_for(i, 2), 2, args.trials, args.steps)
        after = control(args.control_steps)
        rounds.append(Round((before + after) / 2, one, two))
        print(_line(i, rounds[-1]), flush=True)
    return rounds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=TRIALS, help="trials per run")
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps per trial")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds per storage")
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL database to use")
    parser.add_argument("--no-postgres", action="store_true", help="journal file only")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Markdown file to write")
    args = parser.parse_args(argv)
    args.control_steps = 10 * args.steps  # a few seconds of the same work as a trial
    load_before = os.getloadavg()
    warnings.simplefilter("ignore")  # Optuna's experimental/deprecation notes
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    results: dict[str, list[Round]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["journal file"] = run_rounds(
            "journal file", lambda i, w: os.path.join(tmp, f"{i}-{w}.journal"), args
        )
    with postgres(args.postgres, not args.no_postgres) as (url, pg_note):
        if url is not None:  # one database; every run makes a study of its own in it
            results["PostgreSQL"] = run_rounds("PostgreSQL", lambda i, w: url, args)
        else:
            print(f"PostgreSQL: {pg_note}")

    table = _table(results)
    print()
    print(table)
    command = "python studies/bench_workers.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    header = "\n".join(
        [
            "# Trials per minute with 1 and 2 local workers",
            "",
            f"- command: `{command.strip()}`",
            f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- versions: {versions()}",
            f"- machine: {machine(load_before)}",
            f"- task: `bench_task` ({args.steps} steps a trial), {args.trials} trials a run, "
            f"a fresh study per run, {args.rounds} rounds per storage",
            f"- PostgreSQL: {pg_note}",
            "",
            "Goal: 2 workers >= 1.8x the trials per minute of 1 worker on 2 cores. Each round "
            "measures, back to back, the control (the bare training loop, "
            f"{args.control_steps} steps, no search, in 2 processes versus 1: what a second "
            "process could add on this machine at that moment), then 1 worker, then 2 "
            "workers, then the control again (the round's control is the mean of the two; "
            "'of control' is the workers' ratio over it). 'trials' rates span the first "
            "trial's start to the last trial's end; "
            "'wall' rates cover the whole `tune` call (probe and worker start-up included). "
            "The summary rows are medians over the rounds.",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + "\n" + table + "\n")
    print(f"\nwrote {args.out}")


def _line(i: int, r: Round) -> str:
    return (
        f"{r.one.storage:>12}, round {i + 1}: control {r.control:.2f}x; trials/min "
        f"{r.one.per_min:6.1f} (1 worker), {r.two.per_min:6.1f} (2 workers): {r.ratio:.2f}x "
        f"(wall {r.ratio_wall:.2f}x), {r.of_control:.0%} of the control"
    )


def _table(results: dict[str, list[Round]]) -> str:
    rows = [
        "| storage | round | control 2/1 | trials/min, 1 worker | trials/min, 2 workers "
        "| ratio 2/1 (trials) | ratio 2/1 (wall) | of control |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    med = statistics.median
    for label, rounds in results.items():
        for i, r in enumerate(rounds):
            rows.append(
                f"| {label} | {i + 1} | {r.control:.2f}x | {r.one.per_min:.1f} "
                f"| {r.two.per_min:.1f} | {r.ratio:.2f}x | {r.ratio_wall:.2f}x "
                f"| {r.of_control:.0%} |"
            )
        rows.append(
            f"| **{label}** | **median** | **{med(r.control for r in rounds):.2f}x** "
            f"| **{med(r.one.per_min for r in rounds):.1f}** "
            f"| **{med(r.two.per_min for r in rounds):.1f}** "
            f"| **{med(r.ratio for r in rounds):.2f}x** "
            f"| **{med(r.ratio_wall for r in rounds):.2f}x** "
            f"| **{med(r.of_control for r in rounds):.0%}** |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
