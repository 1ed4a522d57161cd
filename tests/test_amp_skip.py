"""attach() in real training setups: GradScaler with plain, foreach and fused optimizers; a
skipped step (non-finite, or a spike under spike="skip") that leaves the weights and the whole
optimizer state bit-identical, for every optimizer kind, on the host path and on the
accelerator paths (run on CPU by switching the host branch off)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from autoclip import (
    NormClip,
    QuantileClip,
    UnsupportedError,
    ValueClip,
    ZScoreClip,
    create_clipper,
)
from autoclip.clippers import _attach
from autoclip.functional import total_norm


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 6, generator=gen), torch.randn(16, 3, generator=gen)


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    x, y = _batch(step)
    return (model(x) - y).square().mean()


KINDS = {"plain": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


# -- GradScaler --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("name, params", [("norm", {"max_norm": 1e9}), ("quantile", {})])
def test_grad_scaler_clipper_measures_the_unscaled_norm(kind, name, params):
    """A fused step gets the gradients still x65536, with grad_scale/found_inf set: the clipper
    must still measure (and an adaptive one learn) the true norm."""
    model, twin = _model(), _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, **KINDS[kind])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    clipper = create_clipper(name, **params)
    clipper.attach(opt)
    true_norms = []
    for step in range(4):
        twin.load_state_dict(model.state_dict())
        twin.zero_grad()
        _loss(twin, step).backward()
        true_norms.append(total_norm([p.grad for p in twin.parameters()]).item())
        opt.zero_grad()
        scaler.scale(_loss(model, step)).backward()
        scaler.step(opt)
        scaler.update()
        measured = clipper.last_result_.total_norm.item()
        assert measured == pytest.approx(true_norms[-1], rel=1e-4)
    assert clipper.steps.item() == 4
    if name == "quantile":  # the history holds unscaled norms
        buf = clipper.state_dict()["state"]["buffer"]
        history = buf[torch.isfinite(buf)].sort().values.tolist()
        assert history == pytest.approx(sorted(true_norms), rel=1e-4)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    "name, params", [("norm", {"max_norm": 0.05}), ("value", {"clip_value": 1e-3})]
)
def test_grad_scaler_clipped_update_equals_clipping_the_unscaled_gradients(kind, name, params):
    """The step taken under GradScaler equals clipping unscaled gradients and stepping."""
    model, twin = _model(), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, **KINDS[kind])
    ref_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    create_clipper(name, **params).attach(opt)
    ref_clip = create_clipper(name, **params)
    for step in range(3):
        opt.zero_grad()
        scaler.scale(_loss(model, step)).backward()
        scaler.step(opt)
        scaler.update()
        ref_opt.zero_grad()
        _loss(twin, step).backward()
        r = ref_clip(list(twin.parameters()))
        assert r.clipped.item()
        ref_opt.step()
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_step_the_scaler_skips_is_not_counted(kind):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, **KINDS[kind])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    clipper = QuantileClip(window=8)
    clipper.attach(opt)
    for step in range(3):
        opt.zero_grad()
        scaler.scale(_loss(model, step)).backward()
        scaler.step(opt)
        scaler.update()
    before = clipper.state_dict()["state"]
    weights = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(_loss(model, 9) * math.inf).backward()  # overflow: the scaler skips the step
    scaler.step(opt)
    scaler.update()
    after = clipper.state_dict()["state"]
    for k in before:
        assert torch.equal(before[k], after[k]) or (
            torch.isnan(before[k]).any()
            and torch.equal(before[k].nan_to_num(), after[k].nan_to_num())
        ), k
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))
    assert scaler.get_scale() < 2.0**16  # the scaler did see the overflow


def test_bf16_autocast_training_step_clips():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    clipper = NormClip(0.01)
    clipper.attach(opt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _loss(model, 0)
    loss.backward()
    true = total_norm([p.grad for p in model.parameters()]).item()
    opt.step()
    assert clipper.last_result_.total_norm.item() == pytest.approx(true, rel=1e-6)
    assert clipper.last_result_.clipped.item()


# -- a skip that skips -------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd-momentum": lambda ps, **kw: torch.optim.SGD(
        ps, lr=0.1, momentum=0.9, weight_decay=0.01, **kw
    ),
    "adam": lambda ps, **kw: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.01, **kw),
    "adamw": lambda ps, **kw: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, **kw),
    "rmsprop": lambda ps, **kw: torch.optim.RMSprop(ps, lr=1e-2, momentum=0.5, **kw),
}


def _optimizer_cases():
    for name in OPTIMIZERS:
        for kind in KINDS:
            if kind == "fused" and name == "rmsprop":
                continue  # torch has no fused RMSprop
            yield pytest.param(name, kind, id=f"{name}-{kind}")


@pytest.fixture(params=["host", "accelerator"])
def skip_path(request, monkeypatch):
    """The host skip (hide the gradients) and the accelerator skips (found_inf for fused
    optimizers, snapshot + torch.where for the others), all run on CPU."""
    if request.param == "accelerator":
        monkeypatch.setattr(_attach, "_HOST_BRANCH", False)
    return request.param


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer):
    return [p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.state_dict())


def _assert_unchanged(model: nn.Module, opt: torch.optim.Optimizer, snap) -> None:
    weights, state = snap
    for p, w in zip(model.parameters(), weights, strict=True):
        assert torch.equal(p, w)
    now = opt.state_dict()
    assert now["param_groups"] == state["param_groups"]
    assert set(now["state"]) == set(state["state"])
    for i, entries in state["state"].items():
        assert set(now["state"][i]) == set(entries)
        for k, v in entries.items():
            assert torch.equal(now["state"][i][k], v), (i, k)


def _train(model, opt, steps, scale=1.0, start=0):
    for step in range(start, start + steps):
        opt.zero_grad()
        (_loss(model, step) * scale).backward()
        opt.step()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("opt_name, kind", list(_optimizer_cases()))
def test_nonfinite_skip_leaves_weights_and_optimizer_state_bit_identical(
    skip_path, opt_name, kind, bad
):
    model = _model()
    opt = OPTIMIZERS[opt_name](model.parameters(), **KINDS[kind])
    clipper = NormClip(1.0)
    clipper.attach(opt)
    _train(model, opt, 3)
    snap = _snapshot(model, opt)
    opt.zero_grad()
    _loss(model, 3).backward()
    next(model.parameters()).grad[0, 0] = bad
    opt.step()
    _assert_unchanged(model, opt, snap)
    assert clipper.skipped.item() == 1 and clipper.steps.item() == 4
    assert not clipper.last_result_.finite.item() and clipper.last_result_.skipped.item()
    _train(model, opt, 1, start=4)  # and the next finite step does update
    assert not torch.equal(next(model.parameters()), snap[0][0])


@pytest.mark.parametrize("opt_name, kind", list(_optimizer_cases()))
@pytest.mark.parametrize(
    "name, params",
    [
        ("zscore", {"warmup_steps": 5, "spike": "skip"}),
        ("quantile", {"window": 16, "spike": "skip", "spike_factor": 3.0}),
        ("quantile", {"method": "stream", "spike": "skip", "spike_factor": 3.0}),
    ],
    ids=["zscore", "quantile-window", "quantile-stream"],
)
def test_spike_skip_leaves_weights_and_optimizer_state_bit_identical(
    skip_path, opt_name, kind, name, params
):
    model = _model()
    opt = OPTIMIZERS[opt_name](model.parameters(), **KINDS[kind])
    clipper = create_clipper(name, **params)
    clipper.attach(opt)
    _train(model, opt, 8)
    assert clipper.spikes.item() == 0
    history = clipper.state_dict()["state"]
    snap = _snapshot(model, opt)
    _train(model, opt, 1, scale=1e3, start=8)  # a norm 1000x the usual: a spike
    _assert_unchanged(model, opt, snap)
    r = clipper.last_result_
    assert r.finite.item() and r.skipped.item() and not r.clipped.item()
    assert clipper.spikes.item() == 1 and clipper.skipped.item() == 1
    after = clipper.state_dict()["state"]
    for k in history:  # the spike never entered the history
        if k not in ("steps", "skipped", "spikes"):
            torch.testing.assert_close(after[k], history[k], rtol=0, atol=0, equal_nan=True)


def test_spike_clip_policy_clips_instead_of_skipping():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    clipper = ZScoreClip(warmup_steps=5)
    clipper.attach(opt)
    _train(model, opt, 8)
    weights = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, 1, scale=1e3, start=8)
    r = clipper.last_result_
    assert r.clipped.item() and not r.skipped.item() and clipper.spikes.item() == 0
    assert not torch.equal(next(model.parameters()), weights[0])


def test_calling_a_clipper_directly_zeroes_a_skipped_spike():
    clipper = QuantileClip(window=8, spike="skip")
    p = nn.Parameter(torch.zeros(4))
    for _ in range(5):
        p.grad = torch.ones(4)
        assert not clipper([p]).skipped.item()
    p.grad = torch.full((4,), 100.0)
    r = clipper([p])
    assert r.skipped.item() and torch.equal(p.grad, torch.zeros(4))


def test_detaching_removes_both_hooks():
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    clipper = ValueClip(1e-3)
    handle = clipper.attach(opt)
    _train(model, opt, 1)
    handle.remove()
    _train(model, opt, 1, start=1)
    assert clipper.steps.item() == 1


# -- loss spikes -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["quantile", "zscore"])
def test_a_loss_spike_is_skipped_bit_identically_and_never_enters_the_window(skip_path, name):
    """A batch whose loss is far above the robust (median/MAD) band of the last accepted
    losses is skipped even though its gradient norm is ordinary."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    clipper = create_clipper(name, loss_z=6.0, loss_window=20)
    clipper.attach(opt)
    for step in range(15):
        opt.zero_grad()
        loss = _loss(model, step)
        loss.backward()
        clipper.observe_loss(loss)
        opt.step()
    assert clipper.spikes.item() == 0
    window = clipper.state_dict()["state"]["loss_buffer"].clone()
    snap = _snapshot(model, opt)
    opt.zero_grad()
    loss = _loss(model, 15)
    loss.backward()
    clipper.observe_loss(loss.detach() + 100.0)  # the loss spiked; the gradients did not
    opt.step()
    _assert_unchanged(model, opt, snap)
    assert clipper.spikes.item() == 1 and clipper.last_result_.skipped.item()
    after = clipper.state_dict()["state"]["loss_buffer"]
    torch.testing.assert_close(after, window, rtol=0, atol=0, equal_nan=True)


def test_loss_guard_waits_for_enough_history_and_accepts_ordinary_losses():
    clipper = QuantileClip(window=8, loss_z=4.0, loss_window=10)
    p = nn.Parameter(torch.zeros(3))
    gen = torch.Generator().manual_seed(0)
    for step in range(40):
        p.grad = torch.ones(3)
        loss = 1.0 + 0.05 * torch.randn((), generator=gen)
        if step == 3:
            loss = torch.tensor(50.0)  # too early to judge: accepted
        assert not clipper([p], loss=loss).skipped.item(), step
    p.grad = torch.ones(3)
    assert clipper([p], loss=torch.tensor(60.0)).skipped.item()
    p.grad = torch.ones(3)
    assert not clipper([p]).skipped.item()  # no loss given: no loss check


def test_fsdp1_flat_parameters_are_refused_with_the_fix():
    class FlatParameter(nn.Parameter):  # what FSDP1 hands the optimizer: this rank's shard
        pass

    opt = torch.optim.SGD([FlatParameter(torch.zeros(4))], lr=0.1)
    with pytest.raises(UnsupportedError, match="fully_shard"):
        NormClip(1.0).attach(opt)


# -- the accelerator path, on CPU: no host read at all -----------------------------------------


def _syncs(fn) -> int:
    with torch.profiler.profile() as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")


@pytest.mark.parametrize(
    "name, params",
    [
        ("norm", {"max_norm": 0.5}),
        ("value", {"clip_value": 1e-3}),
        ("quantile", {"window": 8}),
        ("quantile", {"method": "stream", "spike": "skip"}),
        ("zscore", {"warmup_steps": 3, "spike": "skip", "loss_z": 4.0, "loss_window": 10}),
        ("agc", {}),
    ],
)
@pytest.mark.parametrize("opt_name, kind", [("sgd-momentum", "foreach"), ("adamw", "fused")])
def test_the_accelerator_path_reads_nothing_on_the_host(monkeypatch, name, params, opt_name, kind):
    """The CPU stand-in for tests/test_cuda.py: with every host branch switched off, a clipper
    call and an attached (skip-guarded) optimizer step make no host read."""
    from autoclip.clippers import _base, _norm

    monkeypatch.setattr(_base, "_HOST_PATH", False)
    monkeypatch.setattr(_attach, "_HOST_BRANCH", False)
    monkeypatch.setattr(_norm, "_on_host", lambda grads: False)
    model, bare = _model(), _model()
    opt = OPTIMIZERS[opt_name](model.parameters(), **KINDS[kind])
    bare_opt = OPTIMIZERS[opt_name](bare.parameters(), **KINDS[kind])  # no clipper
    clipper = create_clipper(name, **params)
    clipper.attach(opt)
    for step in range(12):
        for m, o in ((model, opt), (bare, bare_opt)):
            o.zero_grad()
            loss = _loss(m, step) * (30.0 if step == 11 else 1.0)
            loss.backward()
        clipper.observe_loss(loss)
        if step < 10:
            opt.step()
            bare_opt.step()
        else:  # at most the optimizer's own reads (a CPU fused step reads its step counts)
            assert _syncs(opt.step) <= _syncs(bare_opt.step)
    assert clipper.steps.item() == 12


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_spike_under_grad_scaler_is_skipped_bit_identically(skip_path, kind):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, **KINDS[kind])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    clipper = ZScoreClip(warmup_steps=5, spike="skip")
    clipper.attach(opt)
    for step in range(9):
        opt.zero_grad()
        scale = 1e3 if step == 8 else 1.0
        scaler.scale(_loss(model, step) * scale).backward()
        if step == 8:
            snap = _snapshot(model, opt)
        scaler.step(opt)
        scaler.update()
    _assert_unchanged(model, opt, snap)
    assert clipper.spikes.item() == 1 and clipper.steps.item() == 9
