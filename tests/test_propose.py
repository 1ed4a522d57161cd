"""Proposals: the rules, the early-bias handling, ready clippers, serialisation, suggest()."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_stats import make_trace
from torch import nn

from autoclip import AGC, NormClip, QuantileClip, ValueClip, ZScoreClip
from autoclip.errors import ConfigError
from autoclip.probe import GradTrace
from autoclip.propose import STRATEGIES, Candidate, Proposal, SearchSpace, propose, suggest
from autoclip.stats import compute_stats


def test_steady_spiky_run_gets_a_fixed_norm_at_the_normal_median():
    st = compute_stats(make_trace(spikes=(60, 97, 130, 171)))
    p = propose(st)
    assert p.recommended.strategy == "norm"
    assert p.recommended.params["max_norm"] == pytest.approx(st.normal.p50, rel=0.05)
    assert p.candidates[0] == p.recommended
    assert tuple(c.strategy for c in p.candidates) == ("norm", "value", "quantile", "zscore", "agc")
    assert p.space.strategies == tuple(c.strategy for c in p.candidates)
    assert "rec.weight" in p.reason and "4 spikes" in p.reason
    # one sentence
    assert p.reason.count(". ") == 0 and p.reason.endswith(".") and "\n" not in p.reason


def test_every_candidate_builds_its_clipper_and_lies_in_its_search_range():
    p = propose(compute_stats(make_trace(spikes=(60, 130))))
    kinds = {
        "norm": NormClip,
        "value": ValueClip,
        "quantile": QuantileClip,
        "zscore": ZScoreClip,
        "agc": AGC,
    }
    ranges = {
        "norm": ("norm", "max_norm"),
        "value": ("value", "clip_value"),
        "quantile": ("quantile", "quantile"),
        "zscore": ("z_thresh", "z_thresh"),
        "agc": ("agc", "clipping"),
    }
    for c in p.candidates:
        clip = p.clipper(c.strategy)
        assert isinstance(clip, kinds[c.strategy])
        assert clip.config == {**clip.config, **c.params}
        field, param = ranges[c.strategy]
        low, high = getattr(p.space, field)
        assert low <= c.params[param] <= high, (c, low, high)
    # value and AGC thresholds come from the sampled |g| and unit ratios
    assert p.candidate("value").params["clip_value"] == pytest.approx(0.01)
    # the trace's unit ratios are 0.01, 0.02, ..., 0.10 at every sampled step: their p90
    ratios = [0.01 * (i + 1) for i in range(10)]
    p90 = np.percentile(ratios, 90)
    assert p.candidate("agc").params["clipping"] == pytest.approx(p90, rel=0.05)
    # max_norm range: 1.5 decades either side of the median
    med = p.recommended.params["max_norm"]
    assert p.space.norm == pytest.approx((med / 10**1.5, med * 10**1.5), rel=0.05)


def test_the_startup_transient_does_not_bias_the_threshold():
    calm = propose(compute_stats(make_trace()))
    biased = propose(compute_stats(make_trace(transient=40, transient_factor=50.0)))
    first_steps = np.median(make_trace(transient=40, transient_factor=50.0).norms[:20])
    assert first_steps > 10  # a threshold from the first steps alone would be >10x too high
    assert biased.recommended.params["max_norm"] == pytest.approx(
        calm.recommended.params["max_norm"], rel=0.15
    )
    # warm starts use the settled norms only
    assert max(biased.warm_norms) < 3.0
    assert len(biased.warm_norms) == 200 - biased.stats.settle_step


def test_a_drifting_level_gets_a_warm_started_quantile_clipper():
    trace = make_trace(drift=8.0)
    p = propose(trace)  # a trace is accepted too
    assert p.stats.drifting and p.recommended.strategy == "quantile"
    assert "rises" in p.reason
    clip = p.clipper()
    assert isinstance(clip, QuantileClip)
    # warm-started: the first threshold is already the settled quantile, not a cold start
    buf = clip.state_dict()["state"]["buffer"]
    assert int(torch.isfinite(buf).sum()) == min(len(p.warm_norms), clip.window)
    level = p.stats.end_level
    w = torch.ones(3, requires_grad=True)
    w.grad = torch.full((3,), 100.0)
    result = clip([w])
    assert float(result.threshold) == pytest.approx(level, rel=0.5)
    assert float(w.grad.norm()) == pytest.approx(float(result.threshold), rel=1e-4)
    # the fixed candidate follows the last quarter's level, not the settled median
    assert p.candidate("norm").params["max_norm"] == pytest.approx(level, rel=0.05)


def test_zscore_and_quantile_candidates_are_warm_started_from_the_probe():
    p = propose(compute_stats(make_trace(spikes=(60,))))
    z = p.clipper("zscore")
    assert int(z.state_dict()["state"]["count"]) == len(p.warm_norms)
    fresh = p.candidate("zscore").clipper()
    assert int(fresh.state_dict()["state"]["count"]) == 0
    assert not p.clipper("norm").adaptive
    with pytest.raises(ConfigError, match="no candidate"):
        p.clipper("bogus")
    with pytest.raises(ConfigError, match="Candidate"):
        p.clipper(3)


def test_a_warm_up_that_diverged_gets_a_tight_norm_clip():
    norms = (1.0, 1.2, 0.9, 1.1, 5.0, 40.0, 300.0, 2e3)
    trace = GradTrace(
        norms=norms,
        losses=(1.0, 0.9, 1.1, 1.0, 12.0, 80.0, 400.0, 2e3),
        layer_names=("w",),
        layer_norms=tuple((n,) for n in norms),
        stopped_early=True,
        diverged=True,
        reason="the loss exploded to 2000 (> 1000x the first) at step 7; the model diverged",
    )
    st = compute_stats(trace)
    assert st.diverged and st.blowup_step == 4
    p = propose(st)
    assert p.recommended.strategy == "norm"
    # the median of the steps before the loss blew up, not of the blow-up
    assert p.recommended.params["max_norm"] == pytest.approx(np.median(norms[:4]), rel=0.05)
    assert "diverged" in p.reason and "blew up" in p.reason
    assert p.space.norm[1] < 20


def test_json_round_trip():
    p = propose(compute_stats(make_trace(spikes=(60, 130), nonfinite=(90,))))
    text = p.to_json()
    back = Proposal.from_json(text)
    assert back == p  # stats are not compared by ==, so check them through JSON
    assert back.to_json() == text
    assert Proposal.from_dict(p.to_dict()).to_json() == text
    assert back.clipper().config == p.clipper().config
    bare = Proposal.from_dict({**p.to_dict(), "stats": None})
    assert bare.stats is None and bare.clipper("quantile").config == p.clipper("quantile").config
    with pytest.raises(ConfigError, match="unknown fields"):
        Proposal.from_dict({**p.to_dict(), "extra": 1})


def test_summary_lists_recommendation_candidates_and_ranges():
    p = propose(compute_stats(make_trace(spikes=(60,))))
    text = p.summary()
    assert text.startswith("Recommended: norm(max_norm=")
    for s in STRATEGIES:
        assert f"  {s}(" in text
    assert "Search ranges:" in text and "Rule of thumb" in text
    assert str(p) == text


def test_dataclass_validation():
    with pytest.raises(ConfigError, match="unknown strategy"):
        Candidate("bogus", {}, "")
    with pytest.raises(ConfigError, match="low <= high"):
        SearchSpace({"norm": (2.0, 1.0), "quantile": (0.1, 0.9)})
    with pytest.raises(ConfigError, match="must lie inside"):
        SearchSpace({"quantile": (0.1, 1.0)})
    with pytest.raises(ConfigError, match="unknown clipper 'bogus'"):
        SearchSpace({"bogus": (1.0, 2.0)})
    with pytest.raises(ConfigError, match="GradStats"):
        propose({"norms": [1.0]})


def _mse(model, batch):
    return nn.functional.mse_loss(model(batch[0]), batch[1])


def test_suggest_is_one_call_before_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)) for _ in range(4)]
    before = [p.detach().clone() for p in model.parameters()]
    proposal = suggest(model, opt, _mse, data, steps=40)
    assert isinstance(proposal, Proposal) and proposal.stats.steps == 40
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert opt.state_dict()["state"] == {}
    clip = proposal.clipper()
    handle = clip.attach(opt)
    for i in range(5):
        opt.zero_grad()
        _mse(model, data[i % 4]).backward()
        opt.step()
    handle.remove()
    assert int(clip.steps) == 5
    assert float(clip.last_result_.threshold) > 0


def _measured_proposal():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)) for _ in range(4)]
    return suggest(model, opt, _mse, data, budget=200)


def test_suggest_recommends_the_measured_threshold_and_derives_the_rest_from_it():
    p = _measured_proposal()
    r = p.response
    assert p.recommended.strategy == "norm" and p.recommended.params["max_norm"] == r.chosen
    assert p.reason.startswith("Measured") and "max_norm" in p.reason
    # the quantile clipper's level is the share of the chosen race's norms below max_norm
    norms = np.asarray(p.warm_norms)
    q = p.candidate("quantile").params["quantile"]
    assert q == float(np.clip(round(float((norms <= r.chosen).mean()), 2), 0.1, 0.99))
    assert p.clipper("quantile").adaptive and len(norms) > 0
    low, high = p.space.norm
    assert low <= r.chosen <= high


def test_a_measured_proposal_round_trips_and_old_json_still_loads():
    p = _measured_proposal()
    back = Proposal.from_json(p.to_json())
    assert back == p and back.response == p.response and back.steps_spent == p.steps_spent
    d = json.loads(p.to_json())
    del d["response"], d["steps_spent"]  # a proposal written before the measurement existed
    old = Proposal.from_dict(d)
    assert old.response is None and old.steps_spent == 0
