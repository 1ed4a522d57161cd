"""How well a short run ranks clipping thresholds: the evidence behind tune's rung rules.

tune's successive halving decides at rungs (a ninth and a third of a trial's length) which
thresholds train on. Whether that decision is right can be measured without running tune:
train the 12-point fixed-norm grid of ``tune_study.py`` once per task and seed, keeping every
step's loss and clip flag, and replay a bracket on those curves. The bracket replayed here is
the one tune runs by default: the 9 grid points nearest the measured suggestion (the
suggestion's own point first), ranked at each rung by ``autoclip.search._fidelity``'s rule on
exactly what a trial reports there (the loss every 10 steps, the fraction of steps clipped),
the survivor judged on its full-length final loss (two finalists, in the shapes tried, as tune
judges them: the knee of their Pareto front). Training is deterministic, so a replayed bracket
is the bracket tune would train on those points; the table of bracket shapes replays other
rung placements and one finalist against two.

    python studies/rung_study.py collect --tasks relu_rnn lstm_adding --seeds 0 1 2
    python studies/rung_study.py replay

``collect`` caches each task x seed in ``studies/results/rung_study/``; ``replay`` writes
``studies/results/rung_study.md``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import platform
import statistics
from pathlib import Path

import numpy as np
import optuna
import torch

import autoclip
from autoclip.objectives import evaluate, final_loss
from autoclip.propose import MIN_RACE_BUDGET, suggest_task
from autoclip.search import _fidelity
from autoclip.search._result import TrialRecord, choose
from autoclip.training import TrainLog, train

GRID = [float(m) for m in np.geomspace(0.01, 100, 12)]
HERE = Path(__file__).parent / "results"
CACHE = HERE / "rung_study"
RESULTS = HERE / "rung_study.md"
BRACKET = 9


def collect(name: str, seed: int) -> dict:
    out = CACHE / f"{name}-{seed}.json"
    if out.exists():
        return json.loads(out.read_text())
    make_task = importlib.import_module(f"autoclip_studies.{name}").make_task
    task = make_task(seed=seed)
    runs = {}
    for m in GRID:
        log = train(task, {"name": "norm", "max_norm": m})
        runs[repr(m)] = {
            "losses": list(log.losses),
            "clipped": [int(c) for c in log.clipped],
            "final": final_loss(log),
            "diverged": log.diverged,
        }
    # the measured suggestion exactly as tune makes it (autoclip.search._study)
    steps = task.steps
    probe_steps = min(100, max(20, steps // 10))
    budget = max(probe_steps + MIN_RACE_BUDGET, (2 * steps) // 5)
    proposal = suggest_task(make_task(seed=seed), steps=probe_steps, budget=budget)
    rec = proposal.recommended
    data = {
        "task": name,
        "seed": seed,
        "steps": steps,
        "grid": runs,
        "recommended": {"strategy": rec.strategy, **rec.params},
        "anchor": proposal.response.anchor if proposal.response is not None else None,
        "proposal_steps": proposal.steps_spent,
        "response": None if proposal.response is None else proposal.response.to_dict(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    return data


def _curve(run: dict, upto: int) -> tuple[list[tuple[int, float]], float]:
    """What a trial reports at step ``upto``: the mean loss of every 10 steps (as
    ``training.train``'s callback gives it) and the fraction of steps clipped."""
    losses = run["losses"][:upto]
    k = _fidelity.SYNC
    pts = [(s, float(np.mean(losses[s - k + 1 : s + 1]))) for s in range(k - 1, len(losses), k)]
    return pts, sum(run["clipped"][:upto]) / max(1, upto)


def window(data: dict, centre: float, size: int = BRACKET) -> list[float]:
    """The ``size`` grid points nearest ``centre`` on a log scale in study order: ``centre``'s
    own first, then outward, the looser of two equally near first (as tune's ladder)."""
    c = int(np.argmin([abs(math.log(m / centre)) for m in GRID]))
    lo = min(max(0, c - size // 2), len(GRID) - size)
    return sorted(GRID[lo : lo + size], key=lambda m: (abs(GRID.index(m) - c), -m))


def _old_rule(curve, steps, clipped):
    """The rung score before this study (forecast along the trend, tight runs penalised),
    kept here to compare: level = median of the last quarter of the 10-step points, times
    the trend's credit (bounded to 20%), raised 25% for a run clipped on >= 90% of steps."""
    t = np.asarray([s + 1 for s, _ in curve], dtype=float)
    y = np.asarray([v for _, v in curve], dtype=float)
    if not len(y) or not np.all(np.isfinite(y)):
        return math.inf
    lvl = float(np.median(y[-max(1, len(y) // 4) :]))
    half = len(y) // 2
    if lvl > 0 and len(y) - half >= 4 and np.all(y[half:] > 0):
        slope = float(np.polyfit(np.log(t[half:]), np.log(y[half:]), 1)[0])
        lvl *= max(min((steps / t[-1]) ** slope, 1.0), 0.8)
    return lvl * (1.25 if clipped >= 0.9 else 1.0)


TWO_FINALISTS = ((27, 5), 2)  # the plan tried and not adopted: rungs at steps/27, steps/5


def _objectives(data: dict, m: float) -> tuple[float, float, float]:
    """A grid point's full-length objectives, as a trial reports them (``evaluate``)."""
    run = data["grid"][repr(m)]
    log = TrainLog(
        losses=tuple(run["losses"]),
        norms=(),
        thresholds=(),
        clipped=tuple(bool(c) for c in run["clipped"]),
        planned_steps=data["steps"],
        diverged=run["diverged"],
        eval_loss=None if run["diverged"] else run["final"],
    )
    return evaluate(log).as_tuple()


def _final(data: dict, finalists: list[float], pareto: bool) -> float:
    """The finalist tune chooses: the knee of the finalists' Pareto front (Pareto mode, as
    ``autoclip.search._result``), or the lowest final loss."""
    if len(finalists) == 1:
        return finalists[0]
    recs = [
        TrialRecord(number=i, state="COMPLETE", config=None, values=_objectives(data, m))
        for i, m in enumerate(finalists)
    ]
    if not pareto:
        return finalists[min(recs, key=lambda r: r.values[0]).number]
    ranks = _fidelity.nondominated_ranks(np.asarray([r.values for r in recs]))
    front = [r for r, k in zip(recs, ranks, strict=True) if k == 0]
    return finalists[choose(front, None)[0].number]


def replay(
    data: dict,
    points: list[float],
    rule: str = "new",
    pareto: bool = True,
    shape: tuple[tuple[int, ...], int] | None = None,
):
    """The grid point a bracket over ``points`` (in study order) chooses at full length, on
    tune's plan or on ``shape`` (rung divisors, finalists; the two-finalist rule's own)."""
    if shape is None and rule == "two finalists":
        shape = TWO_FINALISTS
    plan = _fidelity.Plan.make(data["steps"], *(shape or ()))
    alive = list(range(len(points)))
    keep = plan.keep(len(points))
    for k, rung in enumerate(plan.rungs):
        scores = {}
        for i in alive:
            run = data["grid"][repr(points[i])]
            if len(run["losses"]) < rung:
                continue  # diverged before the rung: never promoted
            curve, clipped = _curve(run, rung)
            score = _fidelity.partial_objectives(curve, clipped)
            if rule == "old":
                score = score._replace(loss=_old_rule(curve, data["steps"], clipped))
            elif rule == "oracle":
                score = score._replace(loss=run["final"])
            scores[i] = score
        if rule == "old":  # its tie: 5%, broken by the study's order
            ids = [i for i in scores if math.isfinite(scores[i].loss)]
            best = min((scores[i].loss for i in ids), default=math.inf)
            tied = sorted(i for i in ids if scores[i].loss <= best * 1.05)
            rest = sorted((i for i in ids if i not in tied), key=lambda i: scores[i].loss)
            alive = (tied + rest)[: keep[k]]
        elif rule == "oracle":
            alive = sorted(scores, key=lambda i: scores[i].loss)[: keep[k]]
        else:
            alive, _ = _fidelity.promote(scores, keep[k], pareto)
        if not alive:
            return None
    if rule == "oracle":
        return points[alive[0]]
    return _final(data, [points[i] for i in alive], pareto)


RULES = {
    "suggest alone": "the measured suggestion's grid point, no search",
    "old": "the rung rule before this study (trend forecast, 25% penalty on tight runs)",
    "new": "the rung rule of autoclip.search._fidelity (20% tie, loosest active clipper; rungs "
    "at a ninth and a third, one finalist)",
    "two finalists": "the same tie on rungs at a 27th and a fifth, two finalists judged at "
    "full length (the knee of their front, as tune's Pareto mode): tried, not adopted",
    "oracle": "rungs that know each point's full-length final loss (the best a bracket can do)",
}


def table(runs: list[dict], tasks: list[str]) -> list[str]:
    head = "| rule | " + " | ".join(tasks) + " |"
    rows = [head, "|---|" + "---:|" * len(tasks)]
    for rule in RULES:
        cells = []
        for name in tasks:
            rs = [r for r in runs if r["task"] == name]
            means = {m: statistics.mean(r["grid"][repr(m)]["final"] for r in rs) for m in GRID}
            best = min(means.values())
            vals, picks = [], []
            for r in rs:
                pts = window(r, r["recommended"]["max_norm"])
                m = pts[0] if rule == "suggest alone" else replay(r, pts, rule)
                vals.append(math.inf if m is None else r["grid"][repr(m)]["final"])
                picks.append("-" if m is None else f"{m:.3g}")
            cells.append(f"{statistics.mean(vals) / best:.3f} ({', '.join(picks)})")
        rows.append(f"| {rule} | " + " | ".join(cells) + " |")
    return rows


DESIGN = ["relu_rnn", "lstm_adding", "digits_mlp"]  # the tie rule was designed on these
STEADY = [  # the two-finalist plan was chosen on these: final loss steady to under 2%
    "adamw_spiky",
    "char_lstm",
    "hetero_regression",
    "sgd_transformer",
    "tiny_transformer",
    "vae_digits",
]
FRESH = ["flow_moons", "mf_ratings", "tcn_forecast"]  # written after the two-finalist trial
TIES = (0.05, 0.1, 0.15, 0.2, 0.3)
ACTIVES = (0.3, 0.5, 0.7, 0.9)


def _ratios(runs: list[dict], tasks: list[str], shape=None) -> list[float]:
    """Each task's replayed mean final loss over the grid's best mean, by the current rule
    (on the bracket ``shape`` when given)."""
    out = []
    for name in tasks:
        rs = [r for r in runs if r["task"] == name]
        means = {m: statistics.mean(r["grid"][repr(m)]["final"] for r in rs) for m in GRID}
        vals = []
        for r in rs:
            m = replay(r, window(r, r["recommended"]["max_norm"]), shape=shape)
            vals.append(math.inf if m is None else r["grid"][repr(m)]["final"])
        out.append(statistics.mean(vals) / min(means.values()))
    return out


def sensitivity(runs: list[dict], tasks: list[str]) -> list[str]:
    """The rule's two constants varied, replayed on every task (all of them seen by then)."""
    rows = [
        "| tie \\ active | " + " | ".join(f"{a:g}" for a in ACTIVES) + " |",
        "|---|" + "---:|" * len(ACTIVES),
    ]
    saved = _fidelity.TIE, _fidelity.ACTIVE
    try:
        for tie in TIES:
            cells = []
            for active in ACTIVES:
                _fidelity.TIE, _fidelity.ACTIVE = tie, active
                ratios = _ratios(runs, tasks)
                ok = sum(x <= 1.05 for x in ratios)
                cells.append(f"{ok} of {len(ratios)}, median {statistics.median(ratios):.3f}")
            rows.append(f"| {tie:.0%} | " + " | ".join(cells) + " |")
    finally:
        _fidelity.TIE, _fidelity.ACTIVE = saved
    return rows


FIRST_RUNGS = (27, 18, 12, 9)  # steps / d
SECOND_RUNGS = (5, 4, 3)


def _summary(ratios: list[float]) -> str:
    gm = math.exp(statistics.mean(math.log(x) for x in ratios))
    return f"{sum(x <= 1.05 for x in ratios)} of {len(ratios)}, geomean {gm:.3f}"


def shapes(runs: list[dict], groups: list[tuple[str, list[str]]]) -> list[str]:
    """Where the two rungs fall and how many finalists, replayed with the current tie rule;
    cost in full runs of a bracket of 9 (what the rungs' rounding to 10 steps adds aside)."""
    rows = [
        "| first rung | second rung | finalists | bracket cost (full runs) | "
        + " | ".join(g for g, _ in groups)
        + " |",
        "|---|---|---:|---:|" + "---|" * len(groups),
    ]
    for d1 in FIRST_RUNGS:
        for d2 in SECOND_RUNGS:
            for finalists in (1, 2):
                keep = [3, finalists]
                cost = 9 / d1 + keep[0] * (1 / d2 - 1 / d1) + keep[1] * (1 - 1 / d2)
                cells = [_summary(_ratios(runs, ts, ((d1, d2), finalists))) for _, ts in groups]
                rows.append(
                    f"| 1/{d1} | 1/{d2} | {finalists} | {cost:.2f} | " + " | ".join(cells) + " |"
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--tasks", nargs="+", required=True)
    c.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r = sub.add_parser("replay")
    r.add_argument("--design-only", action="store_true", help="leave the held-out tasks out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.cmd == "collect":
        for name in args.tasks:
            for seed in args.seeds:
                d = collect(name, seed)
                print(name, seed, d["recommended"], flush=True)
        return
    runs = [json.loads(p.read_text()) for p in sorted(CACHE.glob("*.json"))]
    tasks = sorted({r["task"] for r in runs})
    design = [t for t in DESIGN if t in tasks]
    fresh = [] if args.design_only else [t for t in FRESH if t in tasks]
    held = [] if args.design_only else [t for t in tasks if t not in design + fresh]
    seeds = {t: sorted(r["seed"] for r in runs if r["task"] == t) for t in tasks}
    lines = [
        "# Replayed brackets on a full-length threshold grid",
        "",
        "- command: `python studies/rung_study.py replay` (after `collect` for each task)",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"optuna {optuna.__version__}, autoclip {autoclip.__version__}",
        f"- grid: norm clipping at {', '.join(f'{m:.3g}' for m in GRID)}, full length; seeds "
        + "; ".join(f"{t} {seeds[t]}" for t in tasks),
        "- bracket: the 9 grid points nearest the measured suggestion, ranked at each rung on "
        "what a trial reports there, the finalists (where there are two) judged on their "
        "full-length objectives; each cell: mean final loss of the point chosen / the grid's "
        "best mean (its oracle point), then the point chosen per seed",
        "",
        "Rules: " + "; ".join(f"**{k}**: {v}" for k, v in RULES.items()) + ".",
        "",
        f"## Design tasks ({', '.join(design)}): the rule's constants were chosen on these",
        "",
        *table(runs, design),
    ]
    if held:
        lines += [
            "",
            f"## Held-out tasks ({', '.join(held)}): judged once the rule was fixed",
            "",
            "One exception: the tie-break between clippers that clip equally often (by level, "
            "where it had been by study order) was added after looking at sgd_transformer and "
            "char_lstm seed 0. conv_digits, deep_regression and gru_classify were written "
            "after the rule was fixed, by a session that ran no search on them, and "
            "hetero_regression, vae_digits and resmlp_friedman later still (after tune's "
            "search range was widened; this replay's window of 9 grid points already spans "
            "what that range does). The two-finalist row was designed on six of them (those "
            f"whose final loss is steady to under 2%: {', '.join(STEADY)}) with the rest in "
            "view: it is not held out anywhere here but on the fresh tasks.",
            "",
            *table(runs, held),
        ]
    if fresh:
        lines += [
            "",
            f"## Fresh tasks ({', '.join(fresh)}): written after the two-finalist trial",
            "",
            "Written by a session that ran no search on them and saw no result, after both "
            "rules were fixed and the two-finalist plan was turned down: the clean hold-out "
            "of both rows.",
            "",
            *table(runs, fresh),
        ]
    if held:
        steady = [t for t in STEADY if t in tasks]
        groups = [
            ("steady six", steady),
            ("the other tasks before the fresh", [t for t in tasks if t not in steady + fresh]),
        ] + ([("fresh", fresh)] if fresh else [])
        lines += [
            "",
            "## Where the two rungs fall, and one finalist or two",
            "",
            "Replayed with the tie rule above; each cell: tasks within 1.05x of the grid's "
            "best, and the geometric mean of the ratio. tune spends 25% of the grid's steps, "
            "3 full runs, of which the probe takes about 0.35 and the two baselines one first "
            "rung each, so a bracket can cost about 2.4: two finalists fit only with the "
            "first rung at 1/27. That shape (two finalists, rungs at 1/27 and 1/5) was tried "
            "in the real tune on all fourteen tasks before the fresh three ([tune.md](tune.md), "
            '"Two finalists") and turned down: better on seven, far worse on three. The '
            "replay predicted the direction on the steady six and missed the size elsewhere "
            "(ar_forecast 2.2x here, 2.9x in tune: tune's ladder is not the grid's window).",
            "",
            *shapes(runs, groups),
            "",
            "## Sensitivity: the rule's two constants, replayed on every task",
            "",
            f"The tie (levels within it of the best) and the clip fraction at which a clipper "
            f"counts as acting, varied; each cell: tasks within 1.05x of the grid's best, and "
            f"the median ratio over the {len(tasks)} tasks. The rule uses "
            f"{_fidelity.TIE:.0%} and {_fidelity.ACTIVE:g}. Run after every task had been "
            "seen: it says how sharp the choice is, it is not a hold-out.",
            "",
            *sensitivity(runs, tasks),
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.design_only:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
