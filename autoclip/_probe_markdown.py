"""Probe statistics and proposals as Markdown: percentiles, candidates, the measured races.

Re-exported by :mod:`autoclip.report`; the objects' own ``summary()`` is their plain text.
"""

from __future__ import annotations

import math
from typing import Any

from autoclip._tables import _num, markdown_table
from autoclip.clippers import clipper_info
from autoclip.propose import Proposal
from autoclip.stats import GradStats

__all__ = ["proposal_markdown", "response_markdown", "stats_markdown"]


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
        f"Search ranges ({_log_params(p)} log-uniform): {p.space.describe()}.",
    ]
    if p.response is not None:
        lines += ["", response_markdown(p)]
    if p.stats is not None:
        lines += ["", stats_markdown(p.stats)]
    return "\n".join(lines)


def _log_params(p: Proposal) -> str:
    names = [clipper_info(s).param for s in p.space.strategies if clipper_info(s).log]
    return ", ".join(names) if names else "none"


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
