"""A clipper registered by a user is proposed, searched and reported like the built-ins."""

from __future__ import annotations

import _custom_clipper as custom
import pytest
import torch
from _tasks import make_task

from autoclip import report, tune
from autoclip.clippers import clipper_info, create_clipper, list_clippers
from autoclip.probe import probe_task
from autoclip.propose import propose
from autoclip.stats import compute_stats


@pytest.fixture
def registered():
    custom.register()
    yield clipper_info(custom.NAME)
    custom.unregister()


def test_the_registry_carries_its_metadata(registered):
    assert registered.param == "q" and not registered.log and registered.bounds == (0.0, 1.0)
    assert custom.NAME in [c.name for c in list_clippers()]
    clip = create_clipper(custom.NAME, q=0.5)
    g = torch.tensor([1.0, -2.0, 3.0, -4.0])
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = g.clone()
    res = clip([p])
    bound = torch.quantile(g.abs(), 0.5)  # 2.5
    assert torch.equal(p.grad, g.clamp(-bound, bound)) and bool(res.clipped)
    # without a range rule: its default value, and the whole (open) bounds on a linear scale
    params, _ = registered.propose(None, 1.0)
    assert params == {"q": 0.99}
    low, high = registered.range_for(None, params)
    assert 0.0 < low < 1e-12 and 1 - 1e-12 < high < 1.0
    assert registered.describe({"name": custom.NAME, "q": 0.123456}) == f"{custom.NAME}(q=0.1235)"


def test_unknown_and_duplicate_names_are_refused(registered):
    from autoclip.clippers import register_clipper
    from autoclip.errors import ConfigError

    with pytest.raises(ConfigError, match="already registered"):
        custom.register()
    with pytest.raises(ConfigError, match="not a parameter of AbsQuantileClip"):
        register_clipper("other_absq", "x", param="quantile")(custom.AbsQuantileClip)


def test_propose_tune_and_report_handle_a_new_clipper(registered):
    task = make_task(steps=10)
    proposal = propose(compute_stats(probe_task(task, steps=10)))
    cand = proposal.candidate(custom.NAME)
    assert cand.params == {"q": 0.99}
    result = tune(task, n_trials=3, probe_steps=10, strategies=[custom.NAME], baselines=False)
    names = {t.config["name"] for t in result.trials if t.config}
    assert names == {custom.NAME}
    assert result.chosen.config["name"] == custom.NAME
    text = report.tune_markdown(result)
    assert f"{custom.NAME}(q=" in text
    assert custom.NAME in report.proposal_markdown(proposal)
