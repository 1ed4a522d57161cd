"""Reports: text, Markdown and JSON, and plots (matplotlib is imported only when plotting).

Organised by what is reported, one section each; every section offers ``*_markdown`` for
files, relies on the objects' own ``summary()`` for plain text and ``to_json()`` for JSON, and
draws with ``plot_*`` functions that return a matplotlib ``Figure`` (saved when given a path).

Each section lives in its own private module and is re-exported here: Markdown tables
(``_tables``); probe statistics and proposals as Markdown (``_probe_markdown``) and as figures
(``_probe_plots``, drawn through the shared ``_plots``, which never touches ``pyplot``). This
module writes the files. Search results: ``report_tune``, whose names are reachable here too.

>>> from autoclip import report
>>> print(report.markdown_table(["clipper", "why"], [["value(clip_value=0.1)", "|g| p99"]]))
| clipper | why |
|---|---|
| value(clip_value=0.1) | \\|g\\| p99 |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoclip._plots import _figure_class
from autoclip._probe_markdown import proposal_markdown, response_markdown, stats_markdown
from autoclip._probe_plots import plot_layers, plot_norms, plot_response
from autoclip._tables import _num, markdown_table  # noqa: F401 (_num: tests)
from autoclip.propose import Proposal

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


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj.to_json(indent=2)`` (a stats, proposal or trace object) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj.to_json(indent=2) + "\n")
    return path


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
