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


def test_the_stats_only_proposal_takes_candidates_and_ranges_from_the_registry():
    from test_stats import make_trace

    from autoclip.clippers import searchable

    st = compute_stats(make_trace(spikes=(60,), nonfinite=(90,)))
    p = propose(st)
    threshold = p.candidate("norm").params["max_norm"]
    # every searchable clipper, the recommended one first
    assert set(p.space.strategies) == {i.name for i in searchable()}
    assert p.space.strategies[0] == p.recommended.strategy
    for info in searchable():
        c = p.candidate(info.name)
        if info.name != "norm":  # norm's own rule picks the threshold the others start from
            assert c.params == info.propose(st, threshold)[0]
        assert p.space.range(info.name) == info.range_for(st, c.params)


def test_a_registered_clipper_is_in_every_new_proposal(registered):
    from test_stats import make_trace

    p = propose(compute_stats(make_trace()))
    assert p.candidate(custom.NAME).params == {"q": 0.99}
    low, high = p.space.range(custom.NAME)
    assert 0 < low < high < 1 and custom.NAME in p.space.strategies
