"""The warm-up probe: what it records, how it survives, and that it leaves no trace."""

from __future__ import annotations

import copy
import importlib
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from autoclip import NormClip
from autoclip.errors import ConfigError, TaskError
from autoclip.probe import GradTrace, probe, probe_task

warmup_mod = importlib.import_module("autoclip._warmup")  # the warm-up loop reads the flag


def _mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)) for _ in range(n)]


def _model(seed=0):
    torch.manual_seed(seed)
    # BatchNorm: buffers (running stats, num_batches_tracked); Dropout: consumes the RNG.
    return nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1)
    )


def _optimizer(kind, model):
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return torch.optim.Adam(model.parameters(), lr=1e-2)


def _train_steps(model, opt, data, n, scaler=None):
    for i in range(n):
        opt.zero_grad()
        loss = _mse(model, data[i % len(data)])
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()


def _setup(kind, amp, seed=0):
    """A model and optimizer mid-training: state exists, a scheduler watches the optimizer."""
    model = _model(seed)
    opt = _optimizer(kind, model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3) if amp else None
    data = _data()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        _train_steps(model, opt, data, 1, scaler)
        sched.step()
    # a leftover gradient and eval mode, both of which must survive the probe
    model(data[0][0]).sum().backward()
    model.eval()
    return model, opt, scaler, data


def _assert_same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, path


def _rng():
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "gradscaler"])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_probe_restores_everything_bit_for_bit(kind, amp):
    model, opt, scaler, data = _setup(kind, amp)
    params = list(model.parameters())
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_opt = copy.deepcopy(opt.state_dict())
    before_grads = [p.grad.clone() for p in params]
    grad_objects = [p.grad for p in params]
    before_scaler = copy.deepcopy(scaler.state_dict()) if amp else None
    scale_obj = scaler._scale if amp else None
    before_scale = scaler._scale.clone() if amp else None
    before_rng = _rng()
    random.random(), np.random.rand()  # move python/numpy on: the probe must restore these
    moved_rng = _rng()
    attrs = {k: v for k, v in vars(opt).items() if isinstance(v, bool | int | float)}

    trace = probe(model, opt, _mse, data, steps=12, scaler=scaler)

    assert trace.steps_run == 12 and not trace.stopped_early
    _assert_same(before_model, model.state_dict(), "model")
    _assert_same(before_opt, opt.state_dict(), "optimizer")
    assert opt.param_groups[0]["lr"] == before_opt["param_groups"][0]["lr"]
    assert all(p is q for p, q in zip(params, opt.param_groups[0]["params"], strict=True))
    for p, g, g_obj in zip(params, before_grads, grad_objects, strict=True):
        assert p.grad is g_obj and torch.equal(p.grad, g)
    assert not model.training and not any(m.training for m in model.modules())
    assert {k: v for k, v in vars(opt).items() if isinstance(v, bool | int | float)} == attrs
    if amp:
        _assert_same(before_scaler, scaler.state_dict(), "scaler")
        assert scaler._scale is scale_obj and torch.equal(scaler._scale, before_scale)
    _assert_same(moved_rng, _rng(), "rng")
    assert before_rng[2].shape == moved_rng[2].shape


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "gradscaler"])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_training_after_probe_is_identical_to_training_without_it(kind, amp):
    torch.manual_seed(123)
    model_a, opt_a, scaler_a, data = _setup(kind, amp)
    probe(model_a, opt_a, _mse, data, steps=10, scaler=scaler_a)
    model_a.train()
    _train_steps(model_a, opt_a, data, 4, scaler_a)

    torch.manual_seed(123)
    model_b, opt_b, scaler_b, _ = _setup(kind, amp)
    model_b.train()
    _train_steps(model_b, opt_b, data, 4, scaler_b)

    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(p, q)
    _assert_same(opt_b.state_dict(), opt_a.state_dict(), "optimizer")


def test_probe_leaves_a_fresh_optimizer_fresh():
    # Nothing stepped yet: no state, and no trace of a step for an LR scheduler to see.
    model = _model()
    opt = _optimizer("adam", model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    attrs = set(vars(opt))
    probe(model, opt, _mse, _data(), steps=3)
    assert opt.state_dict()["state"] == {} and set(vars(opt)) == attrs
    assert sched.last_epoch == 0 and opt.param_groups[0]["lr"] == 1e-2


def test_probe_changes_the_model_while_it_runs():
    # Guard for the tests above: the warm-up really trains, so restoring is not vacuous.
    model, opt, _, data = _setup("adam", False)
    seen = []
    w = model[0].weight
    start = w.detach().clone()

    def spy(step, total):
        seen.append(not torch.equal(w, start))

    probe(model, opt, _mse, data, steps=5, progress=spy)
    assert all(seen) and torch.equal(w, start)


def test_norms_match_clip_grad_norm_and_layers_add_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every step sees the same weights
    data = _data(1)
    _mse(model, data[0]).backward()
    expected = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9).item()
    layers = [p.grad.norm().item() for p in model.parameters()]
    trace = probe(model, opt, _mse, data, steps=3)
    assert trace.norms == (expected,) * 3  # the same reduction as torch's, bit for bit
    assert trace.layer_norms[0] == pytest.approx(layers, rel=1e-6)
    for total, row in zip(trace.norms, trace.layer_norms, strict=True):
        assert total == pytest.approx(math.sqrt(sum(x * x for x in row)), rel=1e-5)
    assert trace.layer_names == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert trace.layer_numels == (128, 16, 16, 1)
    assert trace.weight_norms == pytest.approx([p.norm().item() for p in model.parameters()])


def test_samples_of_values_and_agc_ratios():
    model, opt, _, data = _setup("sgd", False)
    trace = probe(model, opt, _mse, data, steps=20, sample_size=50, samples=4)
    assert trace.sample_steps == (4, 9, 14, 19)
    assert trace.value_counts == (50,) * 4 and len(trace.value_sample) == 200
    assert all(v >= 0 for v in trace.value_sample)
    # units: rows of the two weight matrices (16 + 1), all of them since 17 < 50
    assert trace.agc_ratio_counts == (17,) * 4
    assert all(r >= 0 for r in trace.agc_ratio_sample if not math.isnan(r))


def test_gradscaler_norms_are_the_unscaled_ones():
    model, opt, _, data = _setup("sgd", False)
    plain = probe(model, opt, _mse, data, steps=5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaled = probe(model, opt, _mse, data, steps=5, scaler=scaler)
    assert scaled.amp and not plain.amp
    assert scaled.norms == pytest.approx(plain.norms, rel=1e-4)


def _nan_gradient_at(step):
    """A loss_fn whose loss stays finite but whose gradient is NaN at ``step``."""
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        loss = _mse(m, batch)
        if len(calls) == step + 1:
            s = m[0].bias.sum()
            loss = loss + 0.0 * torch.sqrt(s - s.detach())  # value 0, gradient 0 * inf = NaN
        return loss

    return loss_fn


def test_a_nonfinite_step_is_recorded_and_skipped():
    model, opt, _, data = _setup("sgd", False)
    trace = probe(model, opt, _nan_gradient_at(3), data, steps=8)
    assert not trace.stopped_early
    assert trace.skipped == (False,) * 3 + (True,) + (False,) * 4
    assert math.isnan(trace.norms[3]) and math.isfinite(trace.losses[3])
    assert all(math.isfinite(n) for i, n in enumerate(trace.norms) if i != 3)


def _spiky_regression(spike_at=8, factor=1e4):
    """Linear regression by SGD whose gradient is ``factor`` times too big at one step.

    The loss value is untouched; only its gradient spikes, as an exploding gradient does.
    Taken unclipped, that one step throws the weights so far that the loss explodes.
    """
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        loss = _mse(m, batch)
        if len(calls) == spike_at + 1:
            loss = loss + (factor - 1) * (loss - loss.detach())
        return loss

    def reset():
        calls.clear()

    return model, opt, loss_fn, reset


def test_safety_net_caps_a_spike_and_records_it_at_full_size():
    model, opt, loss_fn, reset = _spiky_regression()
    data = _data()
    unsafe = probe(model, opt, loss_fn, data, steps=30, safety_clip=None)
    assert unsafe.diverged and "exploded" in unsafe.reason and unsafe.steps_run < 30
    reset()
    safe = probe(model, opt, loss_fn, data, steps=30)
    assert not safe.stopped_early and safe.steps_run == 30
    assert safe.safety_clipped == tuple(i == 8 for i in range(30))
    others = [n for i, n in enumerate(safe.norms) if i != 8]
    assert safe.norms[8] > 1000 * max(others)  # the raw norm, not the capped one


def test_a_model_that_blows_up_from_the_first_step_stops_with_its_reason():
    # Norms that double every step from the start: the running median climbs with them, so
    # the safety net cannot hold this one; the probe says so instead of measuring a wreck.
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    trace = probe(model, opt, lambda m, b: 1.5 * m.weight.pow(2).sum(), [None], steps=100)
    assert trace.stopped_early and trace.diverged
    assert "exploded" in trace.reason and trace.steps_run < 10
    assert trace.norms[1] == pytest.approx(2 * trace.norms[0], rel=1e-5)


def test_stops_early_when_the_loss_goes_nan():
    model, opt, _, data = _setup("sgd", False)

    def loss_fn(m, batch, calls=[0]):  # noqa: B006
        calls[0] += 1
        loss = _mse(m, batch)
        return loss * math.nan if calls[0] == 6 else loss

    trace = probe(model, opt, loss_fn, data, steps=20)
    assert trace.stopped_early and "non-finite" in trace.reason
    assert trace.steps_run == 6 and len(trace.layer_norms) == 6


def test_an_iterator_of_batches_that_runs_out():
    model, opt, _, data = _setup("sgd", False)
    trace = probe(model, opt, _mse, iter(data[:3]), steps=10)
    assert trace.stopped_early and "ran out after 3" in trace.reason
    assert trace.steps_run == 3
    # a list is cycled instead
    assert probe(model, opt, _mse, data[:3], steps=10).steps_run == 10
    with pytest.raises(TaskError, match="empty"):
        probe(model, opt, _mse, [], steps=10)


def test_attached_clipper_is_suspended_during_the_probe():
    model, opt, _, data = _setup("sgd", False)
    clip = NormClip(1e-6)
    handle = clip.attach(opt)
    trace = probe(model, opt, _mse, data, steps=4)
    assert int(clip.steps) == 0  # the hook did not run
    assert min(trace.norms) > 1e-3  # and the recorded norms are unclipped
    model.train()
    _train_steps(model, opt, data, 1)
    assert int(clip.steps) == 1  # still attached afterwards
    handle.remove()


def test_device_path_matches_host_path(monkeypatch):
    model, opt, _, data = _setup("adam", False)
    host = probe(model, opt, _mse, data, steps=30, sync_every=7)
    monkeypatch.setattr(warmup_mod, "_FORCE_DEVICE_PATH", True)
    device = probe(model, opt, _mse, data, steps=30, sync_every=7)
    assert device.norms == host.norms and device.losses == host.losses
    assert device.layer_norms == host.layer_norms
    model2, opt2, loss_fn, _ = _spiky_regression()
    safe = probe(model2, opt2, loss_fn, data, steps=30, sync_every=7)
    assert not safe.stopped_early and safe.safety_clipped == tuple(i == 8 for i in range(30))


def test_device_path_stops_at_the_failing_step(monkeypatch):
    monkeypatch.setattr(warmup_mod, "_FORCE_DEVICE_PATH", True)
    model, opt, _, data = _setup("sgd", False)

    def loss_fn(m, batch, calls=[0]):  # noqa: B006
        calls[0] += 1
        loss = _mse(m, batch)
        return loss * math.nan if calls[0] == 6 else loss

    trace = probe(model, opt, loss_fn, data, steps=20, sync_every=8)
    assert trace.stopped_early and trace.steps_run == 6


def test_progress_and_json_round_trip():
    model, opt, _, data = _setup("sgd", False)
    calls = []
    trace = probe(model, opt, _mse, data, steps=5, progress=lambda s, t: calls.append((s, t)))
    assert calls == [(i, 5) for i in range(1, 6)]
    again = GradTrace.from_json(trace.to_json())
    assert again == trace
    odd = GradTrace(
        norms=(1.0, math.inf),
        losses=(0.5, math.nan),
        layer_names=("w",),
        layer_norms=((1.0,), (math.inf,)),
    )
    text = odd.to_json()
    assert "Infinity" in text and "NaN" in text
    back = GradTrace.from_json(text)
    assert back.norms[1] == math.inf and math.isnan(back.losses[1])


def test_probe_task_uses_the_task_and_keeps_the_callers_rng():
    from autoclip_studies.relu_rnn import make_task

    task = make_task(seed=1)
    state = _rng()
    trace = probe_task(task, steps=15)
    _assert_same(state, _rng(), "rng")
    assert trace.steps_run == 15 and "rnn.weight_hh_l0" in trace.layer_names
    assert trace.optimizer == "SGD" and trace.lr == pytest.approx(0.003)
    # the same task probes to the same trace: the task's seed fixes the warm-up
    assert probe_task(task, steps=15).to_json() == trace.to_json()  # (NaN != NaN in ==)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"steps": 0}, "steps"),
        ({"safety_clip": 1.0}, "safety_clip"),
        ({"sample_size": -1}, "sample_size"),
        ({"sync_every": 0}, "sync_every"),
    ],
)
def test_bad_arguments_are_config_errors(kw, match):
    model, opt, _, data = _setup("sgd", False)
    with pytest.raises(ConfigError, match=match):
        probe(model, opt, _mse, data, **kw)


def test_bad_loss_and_optimizer_are_task_errors():
    model, opt, _, data = _setup("sgd", False)
    with pytest.raises(TaskError, match="scalar"):
        probe(model, opt, lambda m, b: m(b[0]), data, steps=2)
    with pytest.raises(TaskError, match="require grad"):
        probe(model, opt, lambda m, b: _mse(m, b).detach(), data, steps=2)
    with pytest.raises(TaskError, match="Optimizer"):
        probe(model, "sgd", _mse, data, steps=2)
    # the failed calls left the model as it was, too
    assert not model.training
