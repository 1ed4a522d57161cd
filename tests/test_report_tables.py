"""Every Markdown table autoclip writes keeps its columns: a ``|`` in a cell is escaped."""

from __future__ import annotations

import re

from test_stats import make_trace

from autoclip import report
from autoclip.propose import propose
from autoclip.stats import compute_stats

_UNESCAPED = re.compile(r"(?<!\\)\|")


def _tables(md: str) -> list[list[str]]:
    tables, current = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def test_proposal_tables_keep_their_columns_with_a_pipe_in_a_reason():
    p = propose(compute_stats(make_trace(spikes=(60, 130))))
    assert "|g|" in p.candidate("value").reason  # the text that used to split its cell
    md = report.proposal_markdown(p)
    tables = _tables(md)
    assert tables
    for table in tables:
        widths = {len(_UNESCAPED.findall(row)) for row in table}
        assert len(widths) == 1, table
    assert r"\|g\|" in md
