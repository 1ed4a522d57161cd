"""Reports of a search: text, Markdown, JSON and a plot of a :class:`TuneResult`.

The shared helpers are :mod:`autoclip.report`'s (tables, JSON) and ``autoclip._plots``'
(matplotlib, imported when a figure is drawn, and saving it); these names are reachable from
:mod:`autoclip.report` too (``autoclip.report.format_tune``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoclip._plots import _figure_class, _save
from autoclip.report import markdown_table, write_json
from autoclip.search import TuneResult

__all__ = ["OBJECTIVE_NOTE", "format_tune", "plot_tune", "tune_markdown", "write_tune_report"]

OBJECTIVE_NOTE = (
    "lower is better: speed = loss-curve area / initial loss; "
    "instability = fraction of loss spikes, 1 if diverged"
)


def _values(v: Sequence[float] | None) -> list[Any]:
    return list(v) if v is not None else ["-", "-", "-"]


def _lineage(result: TuneResult) -> list[str]:
    lines = []
    for t in result.trials:
        if t.retry_of is not None:
            lines.append(f"trial {t.number} retries trial {t.retry_of} ({t.state.lower()})")
        elif t.state == "FAIL":
            lines.append(f"trial {t.number} failed: {t.reason or 'its worker died'}")
    return lines


def _chosen_line(result: TuneResult) -> str:
    c = result.chosen
    return "nothing (see the warning)" if c is None else f"{c.label}  (trial {c.number})"


def _cost_line(result: TuneResult) -> str:
    parts = ", ".join(f"{k} {v}" for k, v in result.cost.items())
    return f"{result.train_steps} optimizer steps spent" + (f" ({parts})" if parts else "")


def format_tune(result: TuneResult) -> str:
    """The chosen configuration, why, the Pareto front and the baselines as a compact table."""
    states = [t.state for t in result.trials]
    rec = result.proposal.recommended
    chosen_number = None if result.chosen is None else result.chosen.number
    lines = [
        f"study {result.study_name!r} ({result.mode} mode): {len(states)} trials, "
        f"{states.count('COMPLETE')} at full length, {states.count('PRUNED')} pruned at a rung",
        _cost_line(result),
        f"chosen: {_chosen_line(result)}",
        f"why:    {result.rule}",
        f"probe proposed: {rec.describe()} - {result.proposal.reason}",
    ]
    if result.warning:
        lines.append(f"WARNING: {result.warning}")
    lines += ["", f"  {'configuration':36} {'final loss':>10} {'speed':>7} {'instab':>7}  note"]

    def row(mark: str, label: str, values, note: str) -> str:
        f, s, i = values if values is not None else (math.nan,) * 3
        return f"{mark:2}{label[:36]:36} {f:10.4g} {s:7.3f} {i:7.3f}  {note}"

    for r in result.pareto:
        mark = "*" if r.number == chosen_number else ""
        lines.append(row(mark, r.label, r.values, f"Pareto front, trial {r.number}"))
    for name, r in result.baselines.items():
        note = f"baseline, {r.steps_run} steps" + (" (diverged)" if r.diverged else "")
        lines.append(row("", name, r.values, note))
    lines += _lineage(result)
    lines.append(f"({OBJECTIVE_NOTE}; pruned trials and baselines: as measured at their rung)")
    return "\n".join(lines)


def tune_markdown(result: TuneResult) -> str:
    """A Markdown report of a search: the choice, the cost, the baselines and every trial."""
    chosen_number = None if result.chosen is None else result.chosen.number
    base = markdown_table(
        ["baseline", "steps", "final loss", "speed", "instability", "diverged"],
        [
            [n, r.steps_run, *_values(r.values), r.reason or "no"]
            for n, r in result.baselines.items()
        ],
    )
    cost = markdown_table(["item", "optimizer steps"], list(result.cost.items()))
    trials = markdown_table(
        ["trial", "configuration", "state", "steps", "final loss", "speed", "instability", "note"],
        [
            [
                t.number,
                t.label,
                t.state,
                t.steps_run,
                *_values(t.values),
                " ".join(
                    x
                    for x in (
                        "**chosen**" if t.number == chosen_number else "",
                        "Pareto" if t in result.pareto else "",
                        f"retry of {t.retry_of}" if t.retry_of is not None else "",
                        t.reason or "",
                    )
                    if x
                ),
            ]
            for t in result.trials
        ],
    )
    head = (
        f"Chosen: **{result.chosen.label}** (trial {chosen_number}): {result.rule}."
        if result.chosen is not None
        else "Chosen: **nothing**."
    )
    return "\n".join(
        [
            f"# autoclip search: {result.study_name}",
            "",
            head,
            *(["", f"**Warning:** {result.warning}"] if result.warning else []),
            "",
            f"The probe proposed {result.proposal.recommended.describe()}: "
            f"{result.proposal.reason}",
            "",
            f"{result.mode} mode, {len(result.trials)} trials; {OBJECTIVE_NOTE}. A pruned "
            "trial's values are those of its partial learning curve at the rung it reached.",
            "",
            "## Cost",
            "",
            cost,
            "",
            "## Baselines",
            "",
            base,
            "",
            "## Trials",
            "",
            trials,
            "",
        ]
    )


def plot_tune(result: TuneResult, path: str | Path | None = None) -> Any:
    """Final loss against speed and against instability for every full-length trial; the
    Pareto front, the choice and the baselines marked."""
    fig = _figure_class()(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    front = {t.number for t in result.pareto}
    done = [
        t
        for t in result.trials
        if t.values is not None and t.state == "COMPLETE" and all(map(math.isfinite, t.values))
    ]
    for ax, j, xlabel in (
        (axes[0], 1, "speed (loss-curve area / initial loss)"),
        (axes[1], 2, "instability (loss-spike fraction)"),
    ):
        for t in done:
            color = "tab:red" if t.diverged else "tab:blue" if t.number in front else "tab:gray"
            ax.scatter(t.values[j], t.values[0], color=color, alpha=0.8, s=25)
        c = result.chosen
        if c is not None:
            ax.scatter(
                c.values[j],
                c.values[0],
                marker="*",
                s=250,
                color="gold",
                edgecolor="black",
                zorder=5,
                label=f"chosen: {c.label}",
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final loss")
        if done and all(t.values[0] > 0 for t in done):
            ax.set_yscale("log")
    if result.chosen is not None:
        axes[0].legend(fontsize=7)
    fig.suptitle(
        f"{result.study_name}: full-length trials (blue: Pareto front, red: diverged)",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)
    return fig


def write_tune_report(
    result: TuneResult, out_dir: str | Path, *, plots: bool = True
) -> dict[str, Path]:
    """Write ``result.json``, ``report.md`` and (with matplotlib) ``tune.png``."""
    out = Path(out_dir)
    written = {"json": write_json(result, out / "result.json")}
    written["markdown"] = out / "report.md"
    written["markdown"].write_text(tune_markdown(result))
    if plots:
        try:
            _figure_class()
        except ImportError:
            return written
        written["plot"] = out / "tune.png"
        plot_tune(result, path=written["plot"])
    return written
