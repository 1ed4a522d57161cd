"""Probe statistics and proposals as figures: the warm-up's norms, the layers, the response.

Re-exported by :mod:`autoclip.report`. Each ``plot_*`` returns a matplotlib ``Figure`` (saved
when given a path); matplotlib is imported only inside them (:mod:`autoclip._plots`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from autoclip._plots import _figure_class, _save
from autoclip._tables import _num
from autoclip.clippers import clipper_info
from autoclip.propose import Proposal
from autoclip.stats import GradStats

__all__ = ["plot_layers", "plot_norms", "plot_response"]


def _norm_thresholds(proposal: Proposal | None, stats: GradStats) -> list[tuple[str, float, str]]:
    """(label, value, line style) of the thresholds on the global norm worth drawing."""
    lines = []
    if proposal is not None:
        for c in proposal.candidates:
            # where each (warm-started) clipper would clip the next step, if at a norm level
            clip = proposal.clipper(c)
            bound = clip.norm_threshold
            if bound is not None and math.isfinite(bound) and bound > 0:
                what = "bound after warm start" if clip.adaptive else clipper_info(c.strategy).param
                style = "--" if clip.adaptive else "-"
                lines.append((f"{c.strategy} {what}={_num(bound)}", bound, style))
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
