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


def test_outputs_that_differ_in_the_rounding_of_their_numbers_are_the_same(monkeypatch):
    # another CPU's kernels round differently: a printed percentile moves in its last digit
    assert ro.same("p99 0.63  max 3.43\n0.914 -> 0.981", "p99 0.629  max 3.43\n0.914 -> 0.982")
    assert not ro.same("max_norm 0.085", "max_norm 0.095")  # a real change of the result
    assert not ro.same("at 2.7 it diverged", "at 2.7 it spiked")  # other words
    assert not ro.same("steps 1-50 450", "steps 1-50 450 300")  # another number of numbers
    # such a rerun leaves the README as it is; a real change is rewritten and reported
    text = "<!-- output: autoclip x | check -->\n```\np99 0.63\n```\n"
    monkeypatch.setattr(ro, "run", lambda command: "p99 0.629\n")
    assert ro.render(text) == (text, [])
    monkeypatch.setattr(ro, "run", lambda command: "p99 0.71\n")
    new, stale = ro.render(text)
    assert "p99 0.71" in new and len(stale) == 1


def test_the_readme_marks_its_outputs_and_the_checked_ones_are_current():
    text = (ROOT / "README.md").read_text()
    found = ro.blocks(text)
    assert len(found) >= 3 and any(b.check for b in found)
    _, stale = ro.render(text, only_checked=True)
    assert not stale, (
        "the README's printed output is stale; rerun `python studies/readme_outputs.py`:\n"
        + "\n".join(f"{b.command}:\n{fresh}" for b, fresh in stale)
    )
