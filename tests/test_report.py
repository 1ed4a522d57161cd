"""Reports of probe statistics and proposals: Markdown, JSON, plots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_stats import make_trace

from autoclip import report
from autoclip.propose import Proposal, propose
from autoclip.stats import compute_stats


@pytest.fixture(scope="module")
def proposal():
    return propose(compute_stats(make_trace(spikes=(60, 130), nonfinite=(90,))))


def test_stats_markdown_has_the_tables(proposal):
    md = report.stats_markdown(proposal.stats)
    assert "| all steps |" in md and "| normal regime |" in md
    assert "`rec.weight`" in md and "`body.weight`" in md
    assert "60, 90, 130" in md  # the spikes, the non-finite step included


def test_proposal_markdown_has_recommendation_candidates_and_ranges(proposal):
    md = report.proposal_markdown(proposal)
    assert f"`{proposal.recommended.describe()}`" in md
    assert proposal.reason in md
    for c in proposal.candidates:
        assert f"| {c.strategy} |" in md
    assert "Search ranges" in md and "### Gradient statistics" in md


@pytest.fixture(scope="module")
def measured():
    import torch
    from torch import nn

    from autoclip import suggest

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)) for _ in range(4)]
    return suggest(model, opt, lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), data, budget=90)


def test_a_measured_proposal_reports_and_draws_its_response(measured, tmp_path):
    md = report.proposal_markdown(measured)
    assert "### Measured response" in md
    assert f"**{report._num(measured.response.chosen)}**" in md
    assert f"{measured.steps_spent} optimizer steps in all" in md
    files = report.write_probe_report(measured, tmp_path)
    assert files["response"].stat().st_size > 0
    fig = report.plot_response(measured)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    # the chosen point is marked: a vertical line at the chosen threshold
    assert any(list(line.get_xdata()) == [measured.response.chosen] * 2 for line in ax.get_lines())
    with pytest.raises(TypeError, match="measured"):
        report.plot_response(propose(measured.stats))


def test_markdown_table():
    table = report.markdown_table(["a", "b"], [[1, 0.123456], ["x", float("nan")]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.123 |", "| x | - |"]


def test_plot_norms_draws_the_thresholds(proposal, tmp_path):
    path = tmp_path / "norms.png"
    fig = report.plot_norms(proposal, path=path)
    assert path.stat().st_size > 1000
    ax, hist = fig.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert any(label.startswith("norm max_norm=") for label in labels)
    assert any(label.startswith("rule of thumb") for label in labels)
    assert any(label.startswith("zscore bound") for label in labels)
    assert ax.get_yscale() == "log"
    max_norm = proposal.candidate("norm").params["max_norm"]
    assert max_norm in [line.get_ydata()[0] for line in ax.get_lines()]
    # the histogram carries the same thresholds as vertical lines
    assert max_norm in [line.get_xdata()[0] for line in hist.get_lines()]
    # stats alone: no proposal thresholds, but the plot still works
    fig2 = report.plot_norms(proposal.stats)
    assert not any(
        line.get_label().startswith("norm max_norm") for line in fig2.axes[0].get_lines()
    )


def test_plot_layers(proposal, tmp_path):
    fig = report.plot_layers(proposal.stats, path=tmp_path / "layers.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["rec.weight", "body.weight"]
    assert len(ax.patches) == 4  # two bars per layer
    assert (tmp_path / "layers.png").exists()
    with pytest.raises(TypeError, match="GradStats"):
        report.plot_layers(Proposal.from_dict({**proposal.to_dict(), "stats": None}))


def test_write_probe_report(proposal, tmp_path):
    files = report.write_probe_report(proposal, tmp_path / "out", prefix="proposal")
    assert set(files) == {"json", "markdown", "norms", "layers"}
    assert all(p.exists() for p in files.values())
    back = Proposal.from_json(files["json"].read_text())
    assert back.to_json() == proposal.to_json()
    json.loads(files["json"].read_text())  # strict JSON
    assert files["markdown"].read_text().startswith("### Proposed clipping")
    files = report.write_probe_report(proposal, tmp_path / "noplots", plots=False)
    assert set(files) == {"json", "markdown"}


def test_matplotlib_and_sklearn_are_imported_lazily():
    code = (
        "import sys, autoclip, autoclip.report, autoclip.propose;"
        "print('matplotlib' in sys.modules, 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_plotting_without_matplotlib_names_the_extra(proposal, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"autoclip-tuner\[plot\]"):
        report.plot_norms(proposal)
    # the report still writes what it can
    assert set(report.write_probe_report(proposal, tmp_path)) == {
        "json",
        "markdown",
    }
