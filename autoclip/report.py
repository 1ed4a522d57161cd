"""Reports: text, Markdown and JSON, and plots (matplotlib is imported only when plotting).

Organised by what is reported, one section each; every section offers ``*_markdown`` for
files, relies on the objects' own ``summary()`` for plain text and ``to_json()`` for JSON, and
draws with ``plot_*`` functions that return a matplotlib ``Figure`` (saved when given a path).
Figures are built with ``matplotlib.figure.Figure`` directly, never through ``pyplot``, so
plotting changes no global state and works without a display.

Sections: shared helpers; probe statistics and proposals. Search results: ``report_tune``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoclip.propose import Proposal
from autoclip.stats import GradStats

__all__ = [
    "markdown_table",
    "plot_layers",
    "plot_norms",
    "plot_response",
    "proposal_markdown",
    "response_markdown",
    "stats_markdown",
    "write_json",
    "write_probe_report",
]


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------
def _figure_class():
    """``matplotlib.figure.Figure``, or an ImportError that names the extra to install."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(
            "plotting needs matplotlib; install it with `pip install 'autoclip-tuner[plot]'`"
        ) from exc
    return Figure


def _save(fig: Any, path: str | Path | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")


def _num(x: Any) -> str:
    if isinstance(x, float):
        return "-" if not math.isfinite(x) else f"{x:.3g}"
    return str(x)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats to three significant digits."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        out.append("| " + " | ".join(_num(v) for v in row) + " |")
    return "\n".join(out)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj.to_json(indent=2)`` (a stats, proposal or trace object) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj.to_json(indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Probe statistics and proposals
# ---------------------------------------------------------------------------------------------
def stats_markdown(stats: GradStats) -> str:
    """The statistics as Markdown: percentiles, settled regime, spikes, layers."""
    s = stats
    lines = [f"### Gradient statistics ({s.steps} warm-up steps)", ""]
    if s.stopped_early:
        lines += [f"**Stopped early:** {s.reason}", ""]
    lines.append(
        markdown_table(
            ["", "p50", "p75", "p90", "p95", "p99", "max"],
            [  # a row with no finite value (e.g. nothing sampled before an early stop) is left out
                row
                for row in [
                    ["all steps", s.p50, s.p75, s.p90, s.p95, s.p99, s.max],
                    [f"settled (step {s.settle_step}+)", *_pcts(s.settled)],
                    ["normal regime", *_pcts(s.normal)],
                    ["abs(g) elements", *_pcts(s.values)],
                    ["AGC unit ratios", *_pcts(s.agc_ratios)],
                ]
                if any(math.isfinite(v) for v in row[1:])
            ],
        )
    )
    direction = "rise" if s.trend > 0 else "fall"
    lines += [
        "",
        f"- Trend: norms {direction} {abs(s.trend) * 100:.2g}% per step; last quarter / first "
        f"quarter x{s.trend_ratio:.3g}; settled part "
        + ("still drifting" if s.drifting else "steady")
        + f" (x{s.settled_change:.3g} from step {s.settle_step} to the end).",
    ]
    if s.spike_steps:
        lines.append(
            f"- Spikes: {len(s.spike_steps)} steps ({s.spike_rate:.1%}) at "
            f"{', '.join(map(str, s.spike_steps))}; about {_num(s.spike_factor)}x the local level."
        )
    else:
        lines.append("- Spikes: none.")
    lines += ["", "| layer | share of squared norm | share of spike excess | median g/w |"]
    lines.append("|---|---|---|---|")
    order = sorted(range(len(s.layer_names)), key=lambda i: -s.layer_share[i])
    for i in order:
        lines.append(
            f"| `{s.layer_names[i]}` | {s.layer_share[i]:.1%} | {s.layer_spike_share[i]:.1%} "
            f"| {_num(s.layer_ratio[i])} |"
        )
    return "\n".join(lines)


def _pcts(p: Any) -> list[float]:
    return [p.p50, p.p75, p.p90, p.p95, p.p99, p.max]


def proposal_markdown(proposal: Proposal) -> str:
    """The proposal as Markdown: recommendation, candidates, search ranges (and the stats)."""
    p = proposal
    lines = [
        "### Proposed clipping",
        "",
        f"**Recommended:** `{p.recommended.describe()}`",
        "",
        p.reason,
        "",
        markdown_table(
            ["strategy", "parameters", "why"],
            [[c.strategy, f"`{c.describe()}`", c.reason] for c in p.candidates],
        ),
        "",
        "Search ranges (log-uniform for max_norm, clip_value, agc): "
        f"max_norm {_num(p.space.norm[0])}-{_num(p.space.norm[1])}, "
        f"clip_value {_num(p.space.value[0])}-{_num(p.space.value[1])}, "
        f"quantile {_num(p.space.quantile[0])}-{_num(p.space.quantile[1])}, "
        f"z_thresh {_num(p.space.z_thresh[0])}-{_num(p.space.z_thresh[1])}, "
        f"agc {_num(p.space.agc[0])}-{_num(p.space.agc[1])}.",
    ]
    if p.response is not None:
        lines += ["", response_markdown(p)]
    if p.stats is not None:
        lines += ["", stats_markdown(p.stats)]
    return "\n".join(lines)


def response_markdown(proposal: Proposal) -> str:
    """The measured races as Markdown: one row per threshold, the chosen one in bold."""
    r = proposal.response
    if r is None:
        return ""
    rows = []
    for i, c in enumerate(r.thresholds):
        mark = "**" if i == r.chosen_index else ""
        rows.append(
            [
                f"{mark}{_num(c)}{mark}",
                "diverged" if r.diverged[i] else _num(r.scores[i]),
                len(r.losses[i]),
                ", ".join(str(t) for t in r.spikes[i][:5]) or "-",
                f"{r.clipped[i]:.0%}",
            ]
        )
    return "\n".join(
        [
            f"### Measured response ({r.steps_spent} steps of races; "
            f"{proposal.steps_spent} optimizer steps in all)",
            "",
            markdown_table(
                ["max_norm", "last-quarter loss", "steps run", "loss spikes at", "clipped"], rows
            ),
            "",
            *[f"- {n}" for n in r.notes],
        ]
    )


def _norm_thresholds(proposal: Proposal | None, stats: GradStats) -> list[tuple[str, float, str]]:
    """(label, value, line style) of the thresholds on the global norm worth drawing."""
    lines = []
    if proposal is not None:
        for c in proposal.candidates:
            if c.strategy == "norm":
                lines.append(
                    (
                        f"norm max_norm={_num(c.params['max_norm'])}",
                        float(c.params["max_norm"]),
                        "-",
                    )
                )
            elif c.strategy == "zscore":
                # where the warm-started z-score clipper starts: EMA mean + z * EMA std
                try:
                    ema = proposal.clipper(c).state_dict()["state"]
                    bound = float(ema["mean"]) + c.params["z_thresh"] * math.sqrt(float(ema["var"]))
                except (KeyError, TypeError, ValueError):
                    continue
                if math.isfinite(bound) and bound > 0:
                    lines.append((f"zscore bound after warm start={_num(bound)}", bound, "--"))
    if math.isfinite(stats.mean) and stats.mean > 0:
        lines.append((f"rule of thumb 5x mean={_num(5 * stats.mean)}", 5 * stats.mean, ":"))
    return lines


def plot_norms(
    source: GradStats | Proposal, *, path: str | Path | None = None, title: str | None = None
) -> Any:
    """Global norm over the warm-up (log scale) and its histogram, with the thresholds.

    ``source`` is the statistics, or a proposal (whose thresholds are then drawn too). Spikes
    are marked, non-finite steps shown at the top edge, and the settled part shaded.
    """
    proposal = source if isinstance(source, Proposal) else None
    stats = proposal.stats if proposal is not None else source
    if not isinstance(stats, GradStats):
        raise TypeError("plot_norms needs GradStats or a Proposal that carries its stats")
    Figure = _figure_class()
    import numpy as np

    fig = Figure(figsize=(10, 3.6))
    ax, hx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    norms = np.asarray(stats.norms, dtype=float)
    steps = np.arange(len(norms))
    finite = np.isfinite(norms) & (norms > 0)
    ax.plot(steps[finite], norms[finite], lw=1, color="tab:blue", label="global norm")
    spikes = [s for s in stats.spike_steps if s < len(norms) and finite[s]]
    if spikes:
        ax.scatter(spikes, norms[spikes], color="tab:red", s=18, zorder=3, label="spike")
    top = float(norms[finite].max()) * 1.5 if finite.any() else 1.0
    bad = steps[~np.isfinite(norms)]
    if bad.size:
        ax.scatter(bad, np.full(bad.size, top), marker="x", color="black", label="non-finite")
    ax.axvspan(
        stats.settle_step,
        max(len(norms) - 1, stats.settle_step),
        color="0.92",
        zorder=0,
        label="settled",
    )
    thresholds = _norm_thresholds(proposal, stats)
    colors = ["tab:green", "tab:purple", "0.4", "tab:orange"]
    for (label, value, style), color in zip(thresholds, colors, strict=False):
        ax.axhline(value, ls=style, color=color, lw=1.2, label=label)
        hx.axvline(value, ls=style, color=color, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("warm-up step")
    ax.set_ylabel("gradient norm")
    ax.legend(fontsize=7, loc="best", framealpha=0.8)
    ax.set_title(title or "Gradient norm during the warm-up", fontsize=10)
    if finite.any():
        logs = np.log10(norms[finite])
        bins = np.logspace(logs.min() - 0.05, logs.max() + 0.05, 30)
        hx.hist(norms[finite], bins=bins, color="tab:blue", alpha=0.7)
        hx.set_xscale("log")
    hx.set_xlabel("gradient norm")
    hx.set_ylabel("steps")
    hx.set_title("Histogram", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_layers(
    source: GradStats | Proposal, *, path: str | Path | None = None, top: int = 15
) -> Any:
    """Per-layer breakdown: share of the squared norm, and share of the spikes' excess."""
    stats = source.stats if isinstance(source, Proposal) else source
    if not isinstance(stats, GradStats):
        raise TypeError("plot_layers needs GradStats or a Proposal that carries its stats")
    Figure = _figure_class()
    import numpy as np

    order = sorted(range(len(stats.layer_names)), key=lambda i: -stats.layer_share[i])[:top]
    names = [stats.layer_names[i] for i in order][::-1]
    share = np.array([stats.layer_share[i] for i in order])[::-1]
    spike = np.array([stats.layer_spike_share[i] for i in order])[::-1]
    fig = Figure(figsize=(8, 0.35 * len(names) + 1.4))
    ax = fig.subplots()
    y = np.arange(len(names))
    ax.barh(y + 0.2, share, height=0.4, color="tab:blue", label="share of squared norm")
    ax.barh(y - 0.2, spike, height=0.4, color="tab:red", label="share of spike excess")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Where the gradient norm and its spikes come from", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_response(proposal: Proposal, *, path: str | Path | None = None) -> Any:
    """The response curve, as ``lr_find`` draws it: race loss against max_norm (log x).

    Left: each race's last-quarter loss against its threshold, the chosen one marked, the
    diverged ones as crosses at the top. Right: the races' loss curves.
    """
    r = proposal.response
    if r is None:
        raise TypeError("plot_response needs a Proposal with a measured response (suggest())")
    Figure = _figure_class()
    import numpy as np

    fig = Figure(figsize=(10, 3.6))
    ax, cx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    x = np.asarray(r.thresholds, dtype=float)
    y = np.asarray(r.scores, dtype=float)
    ok = np.isfinite(y)
    ax.plot(x[ok], y[ok], "o-", color="tab:blue", label="race loss (last quarter)")
    top = float(y[ok].max()) * 1.1 if ok.any() else 1.0
    if (~ok).any():
        ax.scatter(x[~ok], np.full((~ok).sum(), top), marker="x", color="tab:red", label="diverged")
    c = r.chosen
    ax.axvline(c, color="tab:green", ls="--", lw=1.2, label=f"chosen max_norm={_num(c)}")
    if ok[r.chosen_index]:
        ax.scatter([c], [y[r.chosen_index]], s=90, facecolors="none", edgecolors="tab:green")
    ax.set_xscale("log")
    ax.set_xlabel("max_norm")
    ax.set_ylabel("training loss")
    ax.set_title(f"Response to the threshold ({proposal.steps_spent} steps in all)", fontsize=10)
    ax.legend(fontsize=7, loc="best", framealpha=0.8)
    from matplotlib import colormaps  # the registry only: no pyplot, no global state

    cmap = colormaps["viridis"]
    for i, losses in enumerate(r.losses):
        color = cmap(i / max(1, len(r.losses) - 1))
        lw = 2.0 if i == r.chosen_index else 0.9
        cx.plot(np.asarray(losses, dtype=float), color=color, lw=lw, label=_num(r.thresholds[i]))
    cx.set_xlabel("race step")
    cx.set_ylabel("training loss")
    cx.set_title("The races (same start, same batches)", fontsize=10)
    cx.legend(fontsize=6, title="max_norm", title_fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    _save(fig, path)
    return fig


def write_probe_report(
    proposal: Proposal, out_dir: str | Path, *, plots: bool = True, prefix: str = "probe"
) -> dict[str, Path]:
    """Write ``{prefix}.json``, ``{prefix}.md`` and (with matplotlib) the two plots.

    Returns the paths written, by kind (``json``, ``markdown``, ``norms``, ``layers``, and
    ``response`` for a measured proposal).
    Plots are skipped silently when matplotlib is not installed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": write_json(proposal, out / f"{prefix}.json")}
    md = out / f"{prefix}.md"
    md.write_text(proposal_markdown(proposal) + "\n")
    written["markdown"] = md
    if plots and proposal.stats is not None:
        try:
            _figure_class()
        except ImportError:
            return written
        written["norms"] = out / f"{prefix}_norms.png"
        plot_norms(proposal, path=written["norms"])
        written["layers"] = out / f"{prefix}_layers.png"
        plot_layers(proposal, path=written["layers"])
        if proposal.response is not None:
            written["response"] = out / f"{prefix}_response.png"
            plot_response(proposal, path=written["response"])
    return written


# Search results live in autoclip.report_tune; their names stay reachable from here.
_TUNE = ("format_tune", "plot_tune", "tune_markdown", "write_tune_report", "OBJECTIVE_NOTE")


def __getattr__(name: str) -> Any:
    if name in _TUNE:
        from autoclip import report_tune

        return getattr(report_tune, name)
    raise AttributeError(f"module 'autoclip.report' has no attribute {name!r}")
