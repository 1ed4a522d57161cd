"""The measured response: races of thresholds, restored afterwards, right by construction."""

from __future__ import annotations

import copy
import json
import math
import random

import numpy as np
import pytest
import torch
from test_probe import _assert_same, _mse, _rng, _setup
from torch import nn

from autoclip import suggest
from autoclip.errors import ConfigError
from autoclip.propose import Proposal
from autoclip.response import RACES, ResponseCurve, ladder, measure_response


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "gradscaler"])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_suggest_restores_everything_bit_for_bit(kind, amp):
    model, opt, scaler, data = _setup(kind, amp)
    params = list(model.parameters())
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_opt = copy.deepcopy(opt.state_dict())
    grads = [(p.grad, p.grad.clone()) for p in params]
    before_scaler = copy.deepcopy(scaler.state_dict()) if amp else None
    random.random(), np.random.rand()
    moved_rng = _rng()

    proposal = suggest(model, opt, _mse, data, budget=120, scaler=scaler)

    assert proposal.response is not None and proposal.response.steps_spent > 0
    _assert_same(before_model, model.state_dict(), "model")
    _assert_same(before_opt, opt.state_dict(), "optimizer")
    assert all(p is q for p, q in zip(params, opt.param_groups[0]["params"], strict=True))
    for p, (g_obj, g) in zip(params, grads, strict=True):
        assert p.grad is g_obj and torch.equal(p.grad, g)
    assert not model.training
    if amp:
        _assert_same(before_scaler, scaler.state_dict(), "scaler")
    _assert_same(moved_rng, _rng(), "rng")


def test_training_after_suggest_is_identical_to_training_without_it():
    def run(with_suggest: bool) -> list[float]:
        model, opt, _, data = _setup("sgd", False)
        if with_suggest:
            suggest(model, opt, _mse, data, budget=100)
        model.train()
        out = []
        for i in range(5):
            opt.zero_grad()
            loss = _mse(model, data[i % len(data)])  # dropout draws from the restored RNG
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    assert run(True) == run(False)


def test_a_blow_up_in_the_races_leaks_nothing():
    """Every race with a large threshold diverges to NaN; the model comes back untouched."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    data = [(100 * torch.randn(8, 4), torch.randn(8, 1)) for _ in range(4)]
    before = copy.deepcopy(model.state_dict())
    curve = measure_response(model, opt, _mse, data, anchor=100.0, budget=80)
    assert any(curve.diverged)
    _assert_same(before, model.state_dict(), "model")
    assert opt.state_dict()["state"] == {}


# ---------------------------------------------------------------------------------------------
# Known right answers
# ---------------------------------------------------------------------------------------------
class _Outliers(nn.Module):
    """Two coordinates: x descends a slope of gradient G; y is kicked by rare outliers.

    Loss on every batch: ``G * x + K/2 * y**2``. On an outlier batch the gradient of y gets an
    extra ``S`` (through ``S * (y - y.detach())``, which adds nothing to the loss value). So:

    * a clean step has gradient norm G (plus K|y|, small once y has decayed): a threshold c
      below G slows every step by c/G, one at or above G leaves it untouched;
    * an outlier step has norm ~S >> G; clipped to c it kicks y by lr*c, so the damage
      K/2 (lr c)^2 grows with c, and unclipped (c >= S) it wrecks the run.

    The right threshold is G by construction: the tightest that does not slow the clean steps.
    """

    def __init__(self, g: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.2 * g, 0.0]))  # x0: half the progress in a race


def _outlier_loss(g: float, k: float = 50.0, s_factor: float = 1000.0):
    def loss_fn(model, outlier: bool):
        x, y = model.w[0], model.w[1]
        loss = g * x + 0.5 * k * y**2
        if outlier:
            loss = loss + s_factor * g * (y - y.detach())
        return loss

    return loss_fn


@pytest.mark.parametrize("g", [1.0, 40.0])
def test_the_threshold_known_by_construction_is_found_within_a_factor_of_two(g):
    model = _Outliers(g)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [i % 7 == 3 for i in range(7)]  # one outlier batch in seven
    proposal = suggest(model, opt, _outlier_loss(g), batches)
    chosen = proposal.recommended.params["max_norm"]
    assert g / 2 <= chosen <= 2 * g, proposal.response.thresholds
    curve = proposal.response
    # The mechanism, not just the number: far below G is slower, far above gets hurt.
    assert curve.scores[0] > curve.scores[curve.chosen_index]
    assert proposal.steps_spent <= 500


def _exploding_setup():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 1, generator=g)
    data = []
    for _ in range(8):
        x = 20 * torch.randn(32, 8, generator=g)  # inputs on a scale of 20: huge gradients
        data.append((x, x @ w))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, opt, data


def test_a_model_that_diverges_in_its_first_steps_gets_a_working_threshold():
    model, opt, data = _exploding_setup()
    # Unclipped it blows up within a few steps.
    m2, o2, _ = _exploding_setup()
    losses = []
    for i in range(20):
        o2.zero_grad()
        loss = _mse(m2, data[i % 8])
        losses.append(loss.item())
        loss.backward()
        o2.step()
    assert not all(math.isfinite(v) and v < 10 * losses[0] for v in losses)

    proposal = suggest(model, opt, _mse, data)
    assert proposal.stats.stopped_early or proposal.stats.diverged or proposal.stats.spike_steps
    chosen = proposal.recommended.params["max_norm"]
    assert math.isfinite(chosen) and chosen > 0
    assert "NaN" not in proposal.summary() and "nan" not in proposal.summary()
    clip = proposal.clipper()
    handle = clip.attach(opt)
    first = _mse(model, data[0]).item()
    trained = []
    for i in range(200):
        opt.zero_grad()
        loss = _mse(model, data[i % 8])
        loss.backward()
        opt.step()
        trained.append(loss.item())
    handle.remove()
    assert all(math.isfinite(v) for v in trained)
    assert np.mean(trained[-16:]) < 0.5 * first


def _one_outlier_batch():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 1, generator=g)
    data = []
    for i in range(8):
        x = torch.randn(32, 8, generator=g)
        y = x @ w + 0.1 * torch.randn(32, 1, generator=g)
        if i == 5:  # heavy-tailed targets: this batch's loss is ~10x the first, at any weights
            y = y + 10 * torch.randn(32, 1, generator=g)
        data.append((x, y))
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.05), data


def test_one_outlier_batch_is_a_spike_in_every_race_not_a_divergence():
    """A batch whose loss is far above the first one whatever the threshold does not make
    every race diverge (which sent the answer down the all-diverged path to 1e-20); a loss
    that stays up still does."""
    model, opt, data = _one_outlier_batch()
    with torch.no_grad():
        assert _mse(model, data[5]).item() > 4 * _mse(model, data[0]).item()
    curve = measure_response(model, opt, _mse, data, anchor=1.0, budget=400)
    assert not any(curve.diverged), curve.thresholds
    assert 0.1 <= curve.chosen <= 10
    # an explosion that lasts: the loosest race of the exploding model stops within steps
    model, opt, data = _exploding_setup()
    curve = measure_response(model, opt, _mse, data, anchor=100.0, budget=400)
    assert curve.diverged[-1] and len(curve.losses[-1]) < 10
    assert not curve.diverged[0]


def test_a_warm_up_stopped_early_cites_no_nan_and_serialises_to_strict_json():
    model, opt, data = _exploding_setup()
    # lr high enough that the unclipped warm-up dies within its first steps
    opt = torch.optim.SGD(model.parameters(), lr=5.0, momentum=0.9)
    proposal = suggest(model, opt, _mse, data)
    assert proposal.stats.stopped_early
    text = proposal.summary() + proposal.stats.summary()
    assert "nan" not in text.lower()
    assert "NaN" not in proposal.reason
    back = Proposal.from_json(proposal.to_json())
    assert back.response == proposal.response
    assert back.steps_spent == proposal.steps_spent
    assert math.isfinite(back.recommended.params["max_norm"])


# ---------------------------------------------------------------------------------------------
# The curve and the budget
# ---------------------------------------------------------------------------------------------
def _small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)) for _ in range(4)]
    return model, opt, data


def test_budget_is_respected_and_reported():
    model, opt, data = _small()
    proposal = suggest(model, opt, _mse, data, budget=160)
    r = proposal.response
    assert proposal.steps_spent == proposal.stats.steps + r.steps_spent <= 160
    assert r.race_steps == (160 - 16) // RACES
    assert f"Steps spent: {proposal.steps_spent}" in proposal.summary()
    assert len(r.losses) == len(r.thresholds) == len(r.scores)
    assert list(r.thresholds) == sorted(r.thresholds)
    assert r.chosen == r.thresholds[r.chosen_index]
    # The space is centred on the measured choice.
    low, high = proposal.space.norm
    assert low < r.chosen < high and math.isclose(math.sqrt(low * high), r.chosen, rel_tol=0.1)


def test_budget_zero_is_the_statistics_only_proposal_and_bad_budgets_are_errors():
    model, opt, data = _small()
    p = suggest(model, opt, _mse, data, budget=0)
    assert p.response is None and p.steps_spent == p.stats.steps == 100
    with pytest.raises(ConfigError, match="budget"):
        suggest(model, opt, _mse, data, budget=-1)
    with pytest.raises(ConfigError, match="budget"):
        suggest(model, opt, _mse, data, steps=100, budget=101)


def test_the_old_call_still_works_and_an_iterator_is_read_once():
    model, opt, data = _small()
    p = suggest(model, opt, _mse, iter(data * 100), steps=30)
    assert p.stats.steps == 30 and p.response is not None
    assert p.steps_spent == 30 + p.response.steps_spent <= 500


def test_ladder_and_curve_validation():
    assert ladder(1.0) == [0.01, 0.032, 0.1, 0.32, 1.0, 3.2]
    with pytest.raises(ConfigError, match="anchor"):
        ladder(math.nan)
    model, opt, data = _small()
    curve = measure_response(model, opt, _mse, data, anchor=1.0, budget=64)
    assert ResponseCurve.from_json(curve.to_json()) == curve
    json.loads(curve.to_json())  # strict JSON
    d = curve.to_dict()
    d["scores"] = d["scores"][:-1]
    with pytest.raises(ConfigError, match="scores"):
        ResponseCurve.from_dict(d)
