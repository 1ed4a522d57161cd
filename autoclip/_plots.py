"""The figures' shared plumbing: matplotlib imported only when a figure is drawn, and saving.

Figures are built with ``matplotlib.figure.Figure`` directly, never through ``pyplot``, so
plotting changes no global state and works without a display. Used by
:mod:`autoclip.report` (probe plots) and :mod:`autoclip.report_tune` (the search plot).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
