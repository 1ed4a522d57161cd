"""The README's printed outputs are what the commands print today (studies/readme_outputs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoclip_studies import readme_outputs as ro

ROOT = Path(__file__).resolve().parent.parent


def test_lines_selection_marks_gaps():
    out = "a\nb\nc\nd\ne\n"
    assert ro.select(out, None) == out
    assert ro.select(out, "1-2,-1") == "a\nb\n...\ne\n"
    assert ro.select(out, "2,3") == "b\nc\n"
    with pytest.raises(ValueError, match="bad lines= token"):
        ro.select(out, "x")


def test_markers_parse_and_a_stale_block_is_found(monkeypatch):
    text = "<!-- output: autoclip x | lines=1-2 | check -->\n```\nold\n```\n"
    [b] = ro.blocks(text)
    assert (b.command, b.lines, b.check, b.body) == ("autoclip x", "1-2", True, "old\n")
    monkeypatch.setattr(ro, "run", lambda command: "new\nlines\nmore\n")
    new, changed = ro.render(text)
    assert new == "<!-- output: autoclip x | lines=1-2 | check -->\n```\nnew\nlines\n```\n"
    assert [c[0].command for c in changed] == ["autoclip x"]
    assert ro.render(new)[1] == []  # a fresh block is not stale


def test_the_readme_marks_its_outputs_and_the_checked_ones_are_current():
    text = (ROOT / "README.md").read_text()
    found = ro.blocks(text)
    assert len(found) >= 3 and any(b.check for b in found)
    _, stale = ro.render(text, only_checked=True)
    assert not stale, (
        "the README's printed output is stale; rerun `python studies/readme_outputs.py`:\n"
        + "\n".join(f"{b.command}:\n{fresh}" for b, fresh in stale)
    )
