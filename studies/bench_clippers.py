"""Per-step cost of every autoclip clipper as a ratio to torch.nn.utils.clip_grad_norm_.

Run: ``python studies/bench_clippers.py`` (``--help`` for options). Measured in one run, on a
24-layer MLP (48 gradient tensors) at two sizes:

1. every registered clipper with its default settings (plus QuantileClip's streaming method),
   as a ratio to ``clip_grad_norm_`` timed in the same loop, and NormClip / ValueClip as a
   ratio to the torch function each replaces (goals 1.05x and 1.5x);
2. QuantileClip (window and stream) after 1k, 100k and 1M steps of history, next to the
   original AutoClip rule (``studies/reference.py``), which recomputes a percentile over the
   whole history every step.

Timing: every repetition restores the same gradients (outside the timed region, so each clip
does real work), then times each method once, in an order that rotates between repetitions;
the table reports the median over repetitions. On CPU, torch runs one thread and the clock is
that thread's CPU time (``time.thread_time``): on a shared machine, wall time also counts the
slices other processes take, which swamps the ratios (``--clock wall`` to see it). The tables
are printed and written as Markdown to ``studies/results/bench_clippers.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import autoclip
from autoclip.clippers import BaseClipper
from autoclip_studies.reference import AutoClipOriginal

RESULTS = Path(__file__).resolve().parent / "results" / "bench_clippers.md"
LAYERS = 24  # 24 Linear layers -> 48 gradient tensors (weight + bias each)
SIZES = {"small": 70, "medium": 600}  # width: ~0.1M and ~7.2M parameters
MAX_NORM = 1.0  # below the gradients' norm, so clip_grad_norm_ really scales
CLIP_VALUE = 0.01  # about the gradients' element size, so ValueClip really clamps
HISTORIES = [1_000, 100_000, 1_000_000]
GOAL = 1.3  # every clipper within 1.3x of clip_grad_norm_
# The fixed clippers against the torch function they replace (issue 14's goals): NormClip does
# what clip_grad_norm_ does plus its bookkeeping; ValueClip also measures the norm, which
# clip_grad_value_ does not (one more pass over the gradients).
PEERS = {"NormClip": ("torch clip_grad_norm_", 1.05), "ValueClip": ("torch clip_grad_value_", 1.5)}
# wall: time.perf_counter. cpu: time.thread_time, the CPU time of this thread, which other
# processes on a shared machine inflate less; with one torch thread it covers all the work.
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def make_model(width: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(LAYERS)]).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 0.01  # [out, in] / [out]
    return model


def synthetic_norms(n: int, around: float, seed: int = 0) -> np.ndarray:
    """A lognormal stream of gradient norms centred on ``around`` (history to warm-start)."""
    rng = np.random.default_rng(seed)
    return around * rng.lognormal(0.0, 0.3, size=n)


def time_methods(
    methods: dict[str, Callable[[], object]],
    grads: list[torch.Tensor],
    reps: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds per call of each method; grads are restored before every call."""
    saved = [g.clone() for g in grads]
    names = list(methods)
    times: dict[str, list[float]] = {n: [] for n in names}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for rep in range(reps + 3):  # the first 3 warm caches and allocators; not recorded
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            torch._foreach_copy_(grads, saved)
            sync()
            t0 = clock()
            methods[name]()
            sync()
            elapsed = clock() - t0
            if rep >= 3:
                times[name].append(elapsed)
    torch._foreach_copy_(grads, saved)
    return {n: statistics.median(t) for n, t in times.items()}


def clipper_methods(params: list[torch.Tensor], norm: float) -> dict[str, Callable[[], object]]:
    """torch's two clipping functions, then every registered clipper (defaults)."""
    required = {"norm": {"max_norm": MAX_NORM}, "value": {"clip_value": CLIP_VALUE}}
    configs = [(info.name, required.get(info.name, {})) for info in autoclip.list_clippers()]
    configs.insert(configs.index(("quantile", {})) + 1, ("quantile", {"method": "stream"}))
    methods: dict[str, Callable[[], object]] = {
        "torch clip_grad_norm_": lambda: torch.nn.utils.clip_grad_norm_(params, MAX_NORM),
        "torch clip_grad_value_": lambda: torch.nn.utils.clip_grad_value_(params, CLIP_VALUE),
    }
    for name, kwargs in configs:
        clipper = autoclip.create_clipper(name, **kwargs)
        clipper.warm_start(synthetic_norms(200, norm))  # steady state; a no-op when fixed
        methods[_label(clipper)] = _bind(clipper, params)
    return methods


def _label(clipper: BaseClipper) -> str:
    extra = f"(method={clipper.method!r})" if isinstance(clipper, autoclip.QuantileClip) else ""
    return f"{type(clipper).__name__}{extra}"


def _bind(clipper: BaseClipper, params: list[torch.Tensor]) -> Callable[[], object]:
    return lambda: clipper(params)


def history_methods(
    params: list[torch.Tensor], norm: float, history: int
) -> list[dict[str, Callable[[], object]]]:
    """The original AutoClip and QuantileClip, each after ``history`` steps of norms.

    Two groups, each timed in its own loop with its own clip_grad_norm_ baseline: the
    original's percentile walks megabytes of history each call and evicts the caches, which
    would slow down whatever runs next in a shared loop.
    """
    norms = synthetic_norms(history, norm, seed=history)
    original = AutoClipOriginal(percentile=10.0)
    original.history = norms.tolist()

    def run_original() -> None:
        original(params)
        original.history.pop()  # keep the history at exactly `history` entries

    window = autoclip.QuantileClip(quantile=0.1).warm_start(norms)
    stream = autoclip.QuantileClip(quantile=0.1, method="stream").warm_start(norms)
    baseline = {"torch clip_grad_norm_": lambda: torch.nn.utils.clip_grad_norm_(params, MAX_NORM)}
    return [
        {**baseline, "original AutoClip": run_original},
        {
            **baseline,
            "QuantileClip(method='window')": lambda: window(params),
            "QuantileClip(method='stream')": lambda: stream(params),
        },
    ]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--reps", type=int, default=200, help="repetitions, small model")
    parser.add_argument(
        "--sizes", nargs="+", default=list(SIZES), choices=list(SIZES), help="model sizes"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="Markdown output file")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine, multi-threaded kernels stall "
        "at their barriers whenever another process holds a core, which swamps the ratios)",
    )
    parser.add_argument(
        "--clock",
        choices=["auto", *CLOCKS],
        default="auto",
        help="wall (perf_counter) or cpu (thread_time; --device cpu --threads 1 only); "
        "auto: cpu where allowed, else wall",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    one_thread = device.type == "cpu" and args.threads == 1
    if args.clock == "auto":
        args.clock = "cpu" if one_thread else "wall"
    if args.clock == "cpu" and not one_thread:
        parser.error("--clock cpu measures one thread: use it with --device cpu --threads 1")
    clock = CLOCKS[args.clock]
    load_before = os.getloadavg()

    sections = []
    for size in args.sizes:
        model = make_model(SIZES[size], device)
        params = list(model.parameters())
        grads = [p.grad for p in params]
        n_params = sum(p.numel() for p in params)
        norm = torch.nn.utils.get_total_norm(grads).item()
        reps = args.reps if size == "small" else max(args.reps // 2, 20)
        title = (
            f"{size} model: {LAYERS}-layer MLP, width {SIZES[size]}, {len(grads)} gradient "
            f"tensors, {n_params:,} parameters; gradient norm {norm:.3g}"
        )

        t = time_methods(clipper_methods(params, norm), grads, reps, device, clock)
        base = t["torch clip_grad_norm_"]
        rows = []
        for name, sec in t.items():
            peer = ""
            if name in PEERS:
                peer_name, goal = PEERS[name]
                ratio = sec / t[peer_name]
                met = "met" if ratio <= goal else "NOT met"
                peer = f"{ratio:.2f}x vs {peer_name.split()[-1]} (goal {goal}x: {met})"
            rows.append(
                [
                    name,
                    f"{sec * 1e6:,.1f}",
                    f"{sec / base:.2f}x",
                    "" if name.startswith("torch") else ("yes" if sec / base <= GOAL else "no"),
                    peer,
                ]
            )
        header = ["method", "median us/step", "vs clip_grad_norm_", f"<= {GOAL}x", "vs its peer"]
        table = markdown_table(header, rows)
        sections.append(
            f"### Per-step cost: {title}\n\n"
            f"{reps} repetitions. Defaults, except NormClip(max_norm={MAX_NORM}) and "
            f"ValueClip(clip_value={CLIP_VALUE}), which have none; adaptive clippers are "
            "warm-started with 200 norms, so they run in steady state.\n\n"
            f"{table}\n"
        )
        print(sections[-1])

        rows = []
        for history in HISTORIES:
            # The original costs O(history) per call: fewer repetitions for its loop only.
            h_reps = max(min(reps, int(2e7 / history)), 10)
            cells = {}
            for group in history_methods(params, norm, history):
                n = h_reps if "original AutoClip" in group else reps
                t = time_methods(group, grads, n, device, clock)
                base = t.pop("torch clip_grad_norm_")
                cells.update(
                    {k: f"{sec * 1e6:,.1f} us ({sec / base:.2f}x)" for k, sec in t.items()}
                )
            rows.append([f"{history:,}", *cells.values(), f"{h_reps} / {reps}"])
        header = ["history (steps)", *cells, "reps (original / QuantileClip)"]
        table = markdown_table(header, rows)
        sections.append(
            f"### Cost vs history length: {title}\n\n"
            "Median per step, and as a ratio to clip_grad_norm_ timed in the same loop (the "
            "original and QuantileClip in separate loops, so the original's cache misses do "
            "not land on QuantileClip). "
            "Percentile 10 / quantile 0.1 (AutoClip's recommendation); QuantileClip's window "
            "is its default (1000).\n\n"
            f"{table}\n"
        )
        print(sections[-1])

    command = " ".join(["python studies/bench_clippers.py", *(argv or sys.argv[1:])])
    header = (
        "# Clipper benchmark\n\n"
        f"Command: `{command}`\n\n"
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}\n"
        f"- torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}\n"
        f"- machine: {platform.platform()}, {_cpu_name()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, device {device}\n"
        f"- clock: {args.clock} ({clock.__name__}); median of the repetitions\n"
        f"- load average (1 min) before / after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}"
        " (other processes sharing the cores add noise to every row alike)\n"
    )
    if device.type == "cuda":
        header += f"- GPU: {torch.cuda.get_device_name(device)}\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + "\n" + "\n".join(sections))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
