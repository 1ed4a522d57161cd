"""Markdown tables and the three-digit numbers in them, for every report autoclip writes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["markdown_table"]


def _num(x: Any) -> str:
    if isinstance(x, float):
        return "-" if not math.isfinite(x) else f"{x:.3g}"
    return str(x)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats to three significant digits.

    A ``|`` inside a cell (``|g|``) is escaped, or it would split the cell in two.
    """

    def cell(v: Any) -> str:
        return _num(v).replace("|", "\\|")

    out = [
        "| " + " | ".join(map(cell, headers)) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in rows:
        out.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(out)
