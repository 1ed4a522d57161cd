"""Clippers: parity with torch, each algorithm against an independent reference, and one
conformance suite that every registered clipper must pass."""

from __future__ import annotations

import io
import math
from dataclasses import fields

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import autoclip
from autoclip import (
    AGC,
    ClipResult,
    ConfigError,
    NonFiniteGradientError,
    NormClip,
    QuantileClip,
    ValueClip,
    ZScoreClip,
    create_clipper,
    list_clippers,
)
from autoclip import functional as F

G = [2.0, -6.0, 8.0, -3.0, 5.0]  # the worked example of the clipping literature


# -- helpers -----------------------------------------------------------------------------------


def _params_with_grads(seed: int, dtype: torch.dtype, mixed: bool = False) -> list[nn.Parameter]:
    """A small random model's parameters after one backward pass; two keep grad=None."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 3)
    ).to(dtype)
    x = torch.randn(32, 7, dtype=dtype)
    (model(x).square().mean() * 50).backward()
    model[2].bias.grad = None
    model[3].weight.grad = None
    params = list(model.parameters())
    if mixed:  # a float64 parameter too: clipping spans two dtype groups
        extra = nn.Parameter(torch.randn(6, dtype=torch.float64))
        extra.grad = torch.randn(6, dtype=torch.float64)
        params.append(extra)
    return params


def _assert_same_grads(a: list[nn.Parameter], b: list[nn.Parameter]) -> None:
    for pa, pb in zip(a, b, strict=True):
        assert (pa.grad is None) == (pb.grad is None)
        if pa.grad is not None:
            assert pa.grad.dtype == pb.grad.dtype
            assert torch.equal(pa.grad, pb.grad)


def _assert_norm_matches_torch(ours: torch.Tensor, grads: list[torch.Tensor], norm_type=2.0):
    """float32/float64: bit-identical to torch. Half precision: autoclip measures in float32,
    so the reference is torch's norm of the gradients upcast to float32."""
    if any(g.dtype in F.LOW_PRECISION for g in grads):
        expected = torch.nn.utils.get_total_norm([g.float() for g in grads], norm_type)
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, expected, rtol=1e-6, atol=0)
    else:
        expected = torch.nn.utils.get_total_norm(grads, norm_type)
        assert ours.dtype == expected.dtype and torch.equal(ours, expected)


def _unit_param(dim: int = 4) -> nn.Parameter:
    return nn.Parameter(torch.zeros(dim))


def _set_norm(p: nn.Parameter, norm: float) -> None:
    """Give ``p`` a gradient of the given 2-norm (a synthetic norm stream, one step)."""
    p.grad = torch.full_like(p, norm / math.sqrt(p.numel()))


class GradStream:
    """Reproducible random gradients for a few parameters, with an occasional spike."""

    def __init__(self, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.params = [
            nn.Parameter(torch.randn(8, 5, generator=self.gen)),
            nn.Parameter(torch.randn(8, generator=self.gen)),
            nn.Parameter(torch.randn(3, 2, 2, 2, generator=self.gen)),
        ]
        self.t = 0

    def next_grads(self) -> list[torch.Tensor]:
        self.t += 1
        scale = 30.0 if self.t % 13 == 0 else math.exp(0.3 * torch.randn((), generator=self.gen))
        return [torch.randn(p.shape, generator=self.gen) * 0.1 * scale for p in self.params]


def _load(params: list[nn.Parameter], grads: list[torch.Tensor]) -> list[nn.Parameter]:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    return params


def _clones(params: list[nn.Parameter]) -> list[nn.Parameter]:
    out = []
    for p in params:
        c = nn.Parameter(p.detach().clone())
        c.grad = None if p.grad is None else p.grad.clone()
        out.append(c)
    return out


def _assert_state_equal(a: dict, b: dict, skip: tuple[str, ...] = ()) -> None:
    assert set(a) == set(b)
    for k in a:
        if k not in skip:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=k)


# -- worked examples and parity with torch -----------------------------------------------------


def test_worked_examples_through_the_clippers():
    p = nn.Parameter(torch.zeros(5))
    p.grad = torch.tensor(G)
    r = ValueClip(4.0)([p])
    assert p.grad.tolist() == [2.0, -4.0, 4.0, -3.0, 4.0]
    assert r.clipped.item() and r.threshold.item() == 4.0

    p = nn.Parameter(torch.zeros(5, dtype=torch.float64))
    p.grad = torch.tensor(G, dtype=torch.float64)
    r = NormClip(6.0)([p])
    norm = math.sqrt(138)
    assert r.total_norm.item() == pytest.approx(norm, rel=1e-12)
    assert p.grad.tolist() == pytest.approx([g * 6.0 / (norm + 1e-6) for g in G], rel=1e-9)
    assert r.clipped.item() and r.threshold.item() == 6.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, "mixed"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.3, 1e3])  # clips / does not clip
def test_norm_clip_is_bit_identical_to_torch(dtype, norm_type, max_norm):
    mixed = dtype == "mixed"
    dtype = torch.float32 if mixed else dtype
    ours, ref = _params_with_grads(0, dtype, mixed), _params_with_grads(0, dtype, mixed)
    r = NormClip(max_norm, norm_type=norm_type)(ours)
    expected = torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type)
    assert r.total_norm.dtype == expected.dtype
    assert torch.equal(r.total_norm, expected)
    _assert_same_grads(ours, ref)
    assert r.clipped.item() == (max_norm < expected.item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("max_norm", [0.3, 1e6])
def test_half_precision_gradients_are_measured_in_float32(dtype, max_norm):
    """A float16 norm overflows above 65504; autoclip accumulates half gradients in float32
    and scales them by the float32 coefficient, as torch does on gradients upcast first."""
    p = nn.Parameter(torch.zeros(64, dtype=dtype))
    p.grad = torch.full((64,), 3072.0, dtype=dtype)  # exact in both dtypes; norm 24576
    q = nn.Parameter(torch.zeros(16, dtype=dtype))
    q.grad = torch.full((16,), 28672.0, dtype=dtype)  # this tensor alone: 114688 > 65504
    true = math.sqrt(64 * 3072.0**2 + 16 * 28672.0**2)
    assert not math.isfinite(torch.linalg.vector_norm(q.grad).item()) or dtype != torch.float16
    expected_grads = [g.float() * min(1.0, max_norm / (true + 1e-6)) for g in (p.grad, q.grad)]
    r = NormClip(max_norm)([p, q])
    assert r.total_norm.dtype == torch.float32 and r.finite.item()
    assert r.total_norm.item() == pytest.approx(true, rel=1e-6)
    for got, want in zip((p.grad, q.grad), expected_grads, strict=True):
        assert got.dtype == dtype
        torch.testing.assert_close(got, want.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, "mixed"])
@pytest.mark.parametrize("clip_value", [0.03, 1e3, "between"])
def test_value_clip_is_bit_identical_to_torch(dtype, clip_value):
    mixed = dtype == "mixed"
    dtype = torch.float32 if mixed else dtype
    ours, ref = _params_with_grads(1, dtype, mixed), _params_with_grads(1, dtype, mixed)
    before = [p.grad.clone() for p in ref if p.grad is not None]
    expected_norm = torch.nn.utils.get_total_norm([g.float() for g in before])
    peak = torch.nn.utils.get_total_norm(before, math.inf).item()
    if clip_value == "between":  # above every element, below the norm: nothing is clamped
        clip_value = (peak + expected_norm.item()) / 2
    r = ValueClip(clip_value)(ours)
    torch.nn.utils.clip_grad_value_(ref, clip_value)
    _assert_same_grads(ours, ref)
    _assert_norm_matches_torch(r.total_norm, before)
    assert r.clipped.item() == (peak > clip_value)


@pytest.fixture(params=["host", "accelerator"])
def value_clip_path(request, monkeypatch):
    """ValueClip has a fused host loop and a foreach path for accelerators; run both on CPU."""
    if request.param == "accelerator":
        monkeypatch.setattr(autoclip.clippers._norm, "_on_host", lambda grads: False)
    return request.param


@pytest.mark.parametrize("nonfinite", ["skip", "raise"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "mixed"])
def test_value_clip_paths_match_torch(value_clip_path, dtype, nonfinite):
    mixed = dtype == "mixed"
    dtype = torch.float32 if mixed else dtype
    ours, ref = _params_with_grads(2, dtype, mixed), _params_with_grads(2, dtype, mixed)
    before = [p.grad.clone() for p in ref if p.grad is not None]
    r = ValueClip(0.03, nonfinite=nonfinite)(ours)
    torch.nn.utils.clip_grad_value_(ref, 0.03)
    _assert_same_grads(ours, ref)
    _assert_norm_matches_torch(r.total_norm, before)
    assert r.clipped.item()


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_value_clip_paths_skip_a_nonfinite_step(value_clip_path, bad):
    params = _params_with_grads(3, torch.float32)
    params[0].grad[0, 0] = bad
    clipper = ValueClip(0.03)
    r = clipper(params)
    assert not r.finite.item() and not r.clipped.item() and clipper.skipped.item() == 1
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in params if p.grad is not None)


# -- QuantileClip ------------------------------------------------------------------------------


def test_window_quantile_equals_numpy_over_a_wrapping_stream():
    window, q = 50, 0.8
    clipper = QuantileClip(q, window=window)
    rng = np.random.default_rng(0)
    p = _unit_param()
    seen: list[float] = []
    for t, norm in enumerate(rng.lognormal(0.0, 1.0, size=4 * window + 7)):
        bad = t % 37 == 5  # non-finite steps are skipped and never enter the window
        if bad:
            p.grad = torch.tensor([math.inf, 0.0, 0.0, 0.0])
        else:
            _set_norm(p, float(norm))
        r = clipper([p])
        if bad:
            assert not r.finite.item()
            continue
        seen.append(r.total_norm.item())
        expected = np.quantile(np.array(seen[-window:], dtype=np.float64), q)
        assert r.threshold.item() == pytest.approx(expected, rel=1e-6), t
    assert len(seen) > 3 * window  # the ring buffer wrapped several times


def test_window_warm_start_equals_feeding_the_norms_one_by_one():
    rng = np.random.default_rng(1)
    norms = rng.lognormal(size=130)
    norms[[3, 50, 99]] = [math.nan, math.inf, math.nan]
    fast, slow = QuantileClip(0.3, window=16), QuantileClip(0.3, window=16)
    fast.warm_start(norms[:5]).warm_start(norms[5:])
    for v in torch.as_tensor(norms, dtype=torch.float32):
        slow._observe(v, torch.isfinite(v))
    _assert_state_equal(fast.state_dict()["state"], slow.state_dict()["state"])


@pytest.mark.parametrize(
    "q, dist, steps",
    [(0.5, "lognormal", 20_000), (0.9, "pareto", 20_000)],
    ids=str,
)
def test_stream_quantile_unclipped_fraction_converges(q, dist, steps):
    # log C moves by -lr (b - q) each step, so |unclipped fraction - q| = |log(C_T / C_0)| /
    # (lr T): a few thousand steps would do; 20k keeps it far inside the 0.02 asked for.
    rng = np.random.default_rng(2)
    if dist == "lognormal":
        norms = rng.lognormal(0.0, 1.5, size=steps)
    else:
        norms = 1.0 + rng.pareto(1.5, size=steps)  # heavy tail: infinite variance
    clipper = QuantileClip(q, method="stream")
    p = _unit_param(1)
    for n in norms:
        p.grad = torch.tensor([float(n)])
        clipper([p])
    unclipped = 1.0 - clipper.clipped.item() / clipper.steps.item()
    assert abs(unclipped - q) <= 0.02
    # ... and the threshold it settled on is near the true quantile of the stream.
    assert abs(math.log(clipper.last_result_.threshold.item() / np.quantile(norms, q))) < 0.5


def test_stream_warm_start_seeds_the_empirical_quantile():
    norms = np.random.default_rng(3).lognormal(size=500)
    clipper = QuantileClip(0.9, method="stream").warm_start(np.append(norms, math.nan))
    expected = np.quantile(norms.astype(np.float32), 0.9)
    assert clipper._state["threshold"].item() == pytest.approx(expected, rel=1e-5)


def test_window_quantile_is_autoclip_while_the_history_fits():
    """QuantileClip(q, window >= steps) clips like the original AutoClip (percentile 100 q of
    the whole history, studies/reference.py), which the benchmark compares it with."""
    from autoclip_studies.reference import AutoClipOriginal

    ours, original = QuantileClip(0.1, window=64), AutoClipOriginal(percentile=10.0)
    stream = GradStream(5)
    twin = _clones(stream.params)
    for _ in range(60):
        grads = stream.next_grads()
        r = ours(_load(stream.params, grads))
        total = original(_load(twin, grads))
        assert r.total_norm.item() == pytest.approx(total, rel=1e-5)
        assert r.threshold.item() == pytest.approx(np.percentile(original.history, 10), rel=1e-5)
        for p, q in zip(stream.params, twin, strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
    assert ours.clipped.item() > 40  # the 10th percentile clips most steps


# -- ZScoreClip --------------------------------------------------------------------------------


class ZClipReference:
    """ZClip's rule (Kumar et al. 2025), as the ZScoreClip docstring states it, in plain Python."""

    def __init__(self, z_thresh=2.5, alpha=0.97, warmup_steps=25, clip_option="adaptive_scaling"):
        self.z, self.alpha, self.warmup, self.option = z_thresh, alpha, warmup_steps, clip_option
        self.buffer: list[float] = []
        self.mean = self.var = None

    def step(self, norm: float) -> float:
        """Return the norm after clipping (== ``norm`` when not clipped)."""
        if self.mean is None:
            self.buffer.append(norm)
            if len(self.buffer) == self.warmup:
                n = len(self.buffer)
                self.mean = sum(self.buffer) / n
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / n
            return norm
        std = math.sqrt(self.var)
        z = (norm - self.mean) / std
        clipped = norm
        if z > self.z:
            if self.option == "adaptive_scaling":
                clipped = self.mean + (self.z**2 / z) * std
            else:
                clipped = self.mean
        self.mean = self.alpha * self.mean + (1 - self.alpha) * clipped
        self.var = self.alpha * self.var + (1 - self.alpha) * (clipped - self.mean) ** 2
        return clipped


@pytest.mark.parametrize("clip_option", ["adaptive_scaling", "mean"])
def test_zscore_clips_spikes_like_the_reference(clip_option):
    rng = np.random.default_rng(4)
    norms = list(rng.normal(1.0, 0.1, size=60))
    spikes = {30: 10.0, 41: 4.0, 55: 50.0}  # far above mean + 2.5 std
    for t, v in spikes.items():
        norms[t] = v
    clipper = ZScoreClip(warmup_steps=20, clip_option=clip_option)
    ref = ZClipReference(warmup_steps=20, clip_option=clip_option)
    p = _unit_param()
    for t, n in enumerate(norms):
        _set_norm(p, n)
        before = p.grad.clone()
        r = clipper([p])
        norm = r.total_norm.item()
        expected = ref.step(norm)
        if t < 20:  # warm-up: nothing is clipped, whatever the norm
            assert torch.equal(p.grad, before) and not r.clipped.item()
            assert r.threshold.item() == math.inf
        elif t in spikes:
            assert r.clipped.item()
            assert expected < norm
            assert r.threshold.item() == pytest.approx(expected, rel=1e-6)
            after = torch.linalg.vector_norm(p.grad).item()
            assert after == pytest.approx(expected, rel=1e-5)
        else:
            assert expected == norm
            assert torch.equal(p.grad, before) and not r.clipped.item()
    assert clipper.clipped.item() == len(spikes)
    # float32 state (MPS has no float64): equal to the float64 reference to float32 precision.
    assert clipper._state["mean"].dtype == torch.float32
    assert clipper._state["mean"].item() == pytest.approx(ref.mean, rel=1e-6)
    assert clipper._state["var"].item() == pytest.approx(ref.var, rel=1e-5)


def test_zscore_float32_state_keeps_a_small_variance_on_a_large_mean():
    """Norms around 100 with spread 0.1 (std/mean = 1e-3): a variance computed as
    E[x^2] - E[x]^2 in float32 would lose it; the deviation-based update keeps it."""
    norms = list(np.random.default_rng(0).normal(100.0, 0.1, size=400))
    clipper = ZScoreClip(warmup_steps=20, z_thresh=1e9)  # nothing is a spike
    ref = ZClipReference(warmup_steps=20, z_thresh=1e9)
    for n in norms:
        clipper.warm_start([n])
        ref.step(float(np.float32(n)))
    assert clipper._state["mean"].item() == pytest.approx(ref.mean, rel=1e-6)
    assert clipper._state["var"].item() == pytest.approx(ref.var, rel=1e-3)


def test_zscore_warmup_counts_only_finite_norms():
    clipper = ZScoreClip(warmup_steps=3)
    p = _unit_param()
    for n in [1.0, math.nan, 1.1, 0.9]:
        p.grad = torch.full((4,), n)
        clipper([p])
    assert clipper._state["count"].item() == 3  # warm-up just ended: the NaN step did not count
    _set_norm(p, 100.0)
    assert clipper([p]).clipped.item()


# -- AGC ---------------------------------------------------------------------------------------


def agc_reference(params, grads, clipping, eps):
    """Brock et al. 2021 eq. 3, one output unit at a time, in float64 Python loops."""
    out = []
    for p, g in zip(params, grads, strict=True):
        p64, g64 = p.detach().double(), g.double()
        units = [(p64, g64)] if p64.ndim <= 1 else list(zip(p64, g64, strict=True))
        clipped = []
        for w_i, g_i in units:
            w_norm = max(math.sqrt(float((w_i**2).sum())), eps)
            g_norm = max(math.sqrt(float((g_i**2).sum())), 1e-6)
            clipped.append(g_i * min(1.0, clipping * w_norm / g_norm))
        out.append(clipped[0] if p64.ndim <= 1 else torch.stack(clipped))
    return out


def _agc_layers(seed: int) -> list[nn.Parameter]:
    """A Linear weight and bias, a conv weight and a scalar, with units of very different
    gradient size."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lin, conv = nn.Linear(6, 4), nn.Conv2d(3, 5, 3)
    conv.weight.data[0] = 1e-5  # a unit whose weight norm is below eps
    scale = nn.Parameter(torch.tensor(0.5))  # a 0-dim parameter is one unit
    params = [lin.weight, lin.bias, conv.weight, scale]
    for p in params[:3]:
        sizes = torch.logspace(-4, 0, p.shape[0]).view(-1, *([1] * (p.ndim - 1)))
        p.grad = torch.randn(p.shape, generator=gen) * sizes
    scale.grad = torch.tensor(-3.0)  # above clipping * 0.5 at both ratios tested
    return params


def _unit_rows(t: torch.Tensor) -> torch.Tensor:
    """One row per unit: the output units of a >= 2-D tensor, else the whole tensor."""
    return t.reshape(t.shape[0], -1) if t.ndim > 1 else t.reshape(1, -1)


def _agc_function(params, clipping):
    return F.agc_(params, clipping)[1]


def _agc_clipper(params, clipping):
    return AGC(clipping)(params).clipped


@pytest.mark.parametrize("entry", [_agc_function, _agc_clipper], ids=["agc_", "AGC"])
@pytest.mark.parametrize("clipping", [0.01, 0.1])
def test_agc_matches_per_unit_reference(entry, clipping):
    params = _agc_layers(0)
    before = [p.grad.clone() for p in params]
    expected = agc_reference(params, before, clipping, 1e-3)
    clipped = entry(params, clipping)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad.double(), e, rtol=1e-5, atol=1e-12)
    # Some units are clipped and some not, so the comparison tells the two apart.
    assert clipped.item()
    rows = [
        torch.equal(a, b)
        for p, old in zip(params, before, strict=True)
        for a, b in zip(_unit_rows(p.grad), _unit_rows(old), strict=True)
    ]
    assert any(rows) and not all(rows)


def test_agc_reports_total_norm_and_no_clip():
    params = _agc_layers(1)
    before = [p.grad.clone() for p in params]
    r = AGC(1e6)(params)
    assert not r.clipped.item()
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before, strict=True))
    torch.testing.assert_close(r.total_norm, F.total_norm(before), rtol=1e-6, atol=0)
    assert r.threshold.item() == pytest.approx(1e6)


# -- conformance: every registered clipper -----------------------------------------------------

REQUIRED = {"norm": {"max_norm": 1.0}, "value": {"clip_value": 0.05}}
VARIANTS = {
    "quantile": [
        {"window": 8},
        {"method": "stream"},
        {"window": 8, "spike": "skip", "loss_z": 5.0, "loss_window": 10},
    ],
    "zscore": [{"warmup_steps": 5, "clip_option": "mean"}, {"warmup_steps": 5, "spike": "skip"}],
}
BAD_VALUES = {
    "norm": [("max_norm", 0.0), ("max_norm", -1.0), ("max_norm", math.nan), ("norm_type", 0.0)],
    "value": [("clip_value", 0.0), ("clip_value", math.inf), ("norm_type", -2.0)],
    "quantile": [
        ("quantile", 0.0),
        ("quantile", 1.0),
        ("window", 0),
        ("window", 2.5),
        ("method", "exact"),
        ("lr", 0.0),
        ("spike", "never"),
        ("spike_factor", 0.0),
        ("loss_z", -1.0),
        ("loss_window", 5),
    ],
    "zscore": [
        ("z_thresh", 0.0),
        ("alpha", 1.0),
        ("warmup_steps", 0),
        ("clip_option", "median"),
        ("spike", "scale"),
        ("loss_z", math.inf),
    ],
    "agc": [("clipping", 0.0), ("eps", -1e-3)],
}


def _cases():
    for info in list_clippers():
        base = REQUIRED.get(info.name, {})
        yield pytest.param(info.name, base, id=info.name)
        for extra in VARIANTS.get(info.name, []):
            label = "-".join(f"{k}={v}" for k, v in extra.items())
            yield pytest.param(info.name, {**base, **extra}, id=f"{info.name}-{label}")


CASES = list(_cases())


def _run(clipper, stream: GradStream, steps: int) -> list[ClipResult]:
    return [clipper(_load(stream.params, stream.next_grads())) for _ in range(steps)]


def test_every_clipper_has_a_conformance_setup():
    for info in list_clippers():
        assert info.name in BAD_VALUES, f"add bad constructor values for {info.name!r}"
        assert info.description
        assert info.adaptive == info.cls.adaptive


@pytest.mark.parametrize("name, params", CASES)
def test_config_round_trips(name, params):
    clipper = create_clipper(name, **params)
    config = clipper.config
    assert config["name"] == name and all(config[k] == v for k, v in params.items())
    rebuilt = create_clipper(**config)
    assert type(rebuilt) is type(clipper) and rebuilt.config == config
    assert repr(rebuilt) == repr(clipper)


@pytest.mark.parametrize("name, params", CASES)
def test_result_fields_are_tensors(name, params):
    clipper = create_clipper(name, **params)
    for r in _run(clipper, GradStream(0), 3):
        for f in fields(ClipResult):
            value = getattr(r, f.name)
            assert isinstance(value, torch.Tensor) and value.ndim == 0, f.name
        assert r.clipped.dtype == torch.bool and r.finite.dtype == torch.bool
    assert clipper.last_result_ is r
    assert clipper.steps.item() == 3


@pytest.mark.parametrize("name, params", CASES)
def test_state_dict_resumes_identically(name, params):
    original = create_clipper(name, **params)
    stream = GradStream(1)
    _run(original, stream, 30)  # past every warm-up, with spikes
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    resumed = create_clipper(**original.config)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    twin = _clones(stream.params)
    clipped_any = False
    for _ in range(15):
        grads = stream.next_grads()
        a, b = original(_load(stream.params, grads)), resumed(_load(twin, grads))
        for f in fields(ClipResult):
            assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name
        for p, q in zip(stream.params, twin, strict=True):
            assert torch.equal(p.grad, q.grad)
        clipped_any |= bool(a.clipped) or bool(a.skipped)
    assert clipped_any  # the comparison covered clipped (or, spike="skip", skipped) steps
    _assert_state_equal(original.state_dict()["state"], resumed.state_dict()["state"])


@pytest.mark.parametrize("name, params", CASES)
def test_state_dict_from_another_config_is_refused(name, params):
    clipper = create_clipper(name, **params)
    other = create_clipper(name, **{**params, "nonfinite": "raise"})
    with pytest.raises(ConfigError, match="create_clipper"):
        clipper.load_state_dict(other.state_dict())


@pytest.mark.parametrize("name, params", CASES)
def test_attach_clips_before_the_optimizer_step_and_detaches(name, params):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    clipper = create_clipper(name, **params)
    twin = create_clipper(name, **params)  # clips copies by hand, for the expected values
    handle = clipper.attach(opt)
    gen = torch.Generator().manual_seed(0)
    for step in range(30):
        opt.zero_grad()
        scale = 100.0 if step == 27 else 1.0
        loss = model(torch.randn(16, 4, generator=gen)).square().mean() * scale
        loss.backward()
        weights = [p.detach().clone() for p in model.parameters()]
        expected = _clones(list(model.parameters()))
        twin(expected)
        opt.step()
        for p, w, e in zip(model.parameters(), weights, expected, strict=True):
            assert torch.equal(p.grad, e.grad)  # the optimizer saw clipped gradients
            torch.testing.assert_close(p.detach(), w - 0.1 * e.grad)
        assert torch.equal(clipper.last_result_.total_norm, twin.last_result_.total_norm)
    assert clipper.steps.item() == 30 and clipper.clipped.item() + clipper.spikes.item() > 0
    handle.remove()
    opt.zero_grad()
    model(torch.randn(16, 4, generator=gen)).sum().mul(100.0).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert clipper.steps.item() == 30
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))


@pytest.mark.parametrize("bad", [math.inf, math.nan])
@pytest.mark.parametrize("name, params", CASES)
def test_skip_zeroes_a_nonfinite_step_and_keeps_the_state(name, params, bad):
    clipper = create_clipper(name, **params)
    stream = GradStream(2)
    _run(clipper, stream, 30)
    before = clipper.state_dict()["state"]
    reference = create_clipper(**clipper.config)
    reference.load_state_dict(clipper.state_dict())

    grads = stream.next_grads()
    grads[0][1, 2] = bad
    grads[2][0, 0, 1, 1] = -bad
    r = clipper(_load(stream.params, grads))
    assert not r.finite.item() and not r.clipped.item()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in stream.params)
    after = clipper.state_dict()["state"]
    assert clipper.skipped.item() == before["skipped"].item() + 1
    assert clipper.steps.item() == before["steps"].item() + 1
    _assert_state_equal(before, after, skip=("steps", "skipped"))

    # The next finite steps clip exactly as if the bad step had never happened.
    twin = _clones(stream.params)
    for _ in range(5):
        grads = stream.next_grads()
        a, b = clipper(_load(stream.params, grads)), reference(_load(twin, grads))
        assert torch.equal(a.threshold, b.threshold)
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(stream.params, twin, strict=True))


@pytest.mark.parametrize("name, params", CASES)
def test_raise_policy_raises_and_changes_nothing(name, params):
    clipper = create_clipper(name, **{**params, "nonfinite": "raise"})
    stream = GradStream(3)
    _run(clipper, stream, 5)
    before = clipper.state_dict()["state"]
    grads = stream.next_grads()
    grads[1][0] = math.nan
    with pytest.raises(NonFiniteGradientError, match="nonfinite='skip'") as info:
        clipper(_load(stream.params, grads))
    assert isinstance(info.value, RuntimeError)
    assert math.isnan(stream.params[1].grad[0].item())  # left for the caller to inspect
    _assert_state_equal(before, clipper.state_dict()["state"])


@pytest.mark.parametrize("name, params", CASES)
def test_warm_start_moves_adaptive_state_only(name, params):
    clipper = create_clipper(name, **params)
    before = clipper.state_dict()["state"]
    norms = np.random.default_rng(5).lognormal(size=40).tolist() + [math.nan, math.inf]
    assert clipper.warm_start(norms) is clipper
    after = clipper.state_dict()["state"]
    assert clipper.steps.item() == 0  # warm-start is not training
    if clipper.adaptive:
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert changed, "warm_start left the adaptive state untouched"
    else:
        _assert_state_equal(before, after)


@pytest.mark.parametrize("name, params", CASES)
def test_clipping_without_gradients(name, params):
    clipper = create_clipper(name, **params)
    p = nn.Parameter(torch.ones(3))
    r = clipper([p])
    assert r.total_norm.item() == 0.0 and r.finite.item()
    assert p.grad is None


@pytest.mark.parametrize("name, params", CASES)
def test_no_host_sync_beyond_the_documented_host_branches(name, params):
    """An accidental .item()/bool() on the hot path would stall an accelerator every step.

    On CPU the only reads are the free host-side branches: the host step's one read of the
    norm (every clipper), and ValueClip's own skip check. The accelerator path has none:
    tests/test_cuda.py runs it under torch.cuda.set_sync_debug_mode("error").
    """
    clipper = create_clipper(name, **params)
    stream = GradStream(4)
    _run(clipper, stream, 30)  # past warm-up
    params_ = _load(stream.params, stream.next_grads())
    with torch.profiler.profile() as prof:
        clipper(params_)
    syncs = sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")
    assert syncs == (2 if name == "value" else 1)


def _bad_value_cases():
    for info in list_clippers():
        base = REQUIRED.get(info.name, {})
        for param, value in [*BAD_VALUES.get(info.name, []), ("nonfinite", "ignore")]:
            yield pytest.param(info.name, base, param, value, id=f"{info.name}-{param}={value}")


@pytest.mark.parametrize("name, base, param, value", list(_bad_value_cases()))
def test_bad_constructor_values_raise_config_error(name, base, param, value):
    with pytest.raises(ConfigError, match=f"`{param}`") as info:
        create_clipper(name, **{**base, param: value})
    assert isinstance(info.value, ValueError)


def test_create_clipper_names_the_choices():
    with pytest.raises(ConfigError, match="choose one of"):
        create_clipper("nope")
    with pytest.raises(ConfigError, match="max_norm"):
        create_clipper("norm", max_norm=1.0, bogus=3)
    assert {info.name for info in list_clippers()} == {"norm", "value", "quantile", "zscore", "agc"}
    assert autoclip.ConfigError is ConfigError


# -- properties --------------------------------------------------------------------------------

grad_lists = st.lists(
    st.lists(
        st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32),
        min_size=1,
        max_size=12,
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.lists(grad_lists, min_size=1, max_size=6), st.sampled_from(CASES))
def test_no_clipper_ever_increases_the_norm(steps, case):
    name, params = case.values
    clipper = create_clipper(name, **params)
    torch.manual_seed(0)
    for values in steps:
        ps = [nn.Parameter(torch.randn(len(v))) for v in values]
        for p, v in zip(ps, values, strict=True):
            p.grad = torch.tensor(v)
        before = F.total_norm([p.grad for p in ps]).item()
        r = clipper(ps)
        after = F.total_norm([p.grad for p in ps]).item()
        assert after <= before * (1 + 1e-6)
        assert r.total_norm.item() == pytest.approx(before, rel=1e-5)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(grad_lists, st.floats(1e-3, 1e4), st.sampled_from([2.0, 1.0, math.inf]))
def test_fixed_clippers_are_idempotent(values, limit, norm_type):
    ps = [nn.Parameter(torch.zeros(len(v))) for v in values]
    for p, v in zip(ps, values, strict=True):
        p.grad = torch.tensor(v)
    value_clip = ValueClip(limit, norm_type=norm_type)
    value_clip(ps)
    once = [p.grad.clone() for p in ps]
    value_clip(ps)
    assert all(torch.equal(p.grad, g) for p, g in zip(ps, once, strict=True))

    norm_clip = NormClip(limit, norm_type=norm_type)
    norm_clip(ps)
    once = [p.grad.clone() for p in ps]
    norm_clip(ps)
    for p, g in zip(ps, once, strict=True):  # a second pass rescales by at most eps / limit
        torch.testing.assert_close(p.grad, g, rtol=1e-5 + 1e-6 / limit, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_host_clipped_decision_rounds_like_the_coefficient_kernel(dtype):
    """On the host NormClip decides "clipped" in Python; it must agree with the tensor
    coefficient torch computes, including at the boundary total ~= max_norm - 1e-6."""
    from autoclip.clippers._normbased import _coef_below_one

    rng = np.random.default_rng(0)
    for max_norm in [1.0, 0.3, 7.77, 1e-5, 123.456]:
        centre = torch.tensor(max_norm - 1e-6, dtype=dtype)
        near = [centre]
        for _ in range(40):  # walk ulp by ulp on both sides of the boundary
            near.append(torch.nextafter(near[-1], torch.tensor(math.inf, dtype=dtype)))
            near.insert(0, torch.nextafter(near[0], torch.tensor(-math.inf, dtype=dtype)))
        spread = torch.tensor(max_norm * rng.lognormal(0, 1, size=200), dtype=dtype)
        for total in [*near, *spread]:
            expected = bool(F.norm_clip_coef(total, max_norm) < 1.0)
            assert _coef_below_one(total.item(), max_norm, dtype) == expected, (max_norm, total)


def test_subclasses_written_against_the_first_contract_still_work():
    """A third-party clipper returning (threshold, clipped) from _clip, or a bare threshold
    from _observe (before skip policies existed), keeps working, skips included."""
    from autoclip.clippers import BaseClipper
    from autoclip.clippers._normbased import NormBasedClipper

    class Halve(BaseClipper):
        def _clip(self, params, grads, total, finite):
            F.scale_(grads, torch.tensor(0.5))
            return total / 2, torch.ones((), dtype=torch.bool)

    class Fixed(NormBasedClipper):
        adaptive = True

        def _observe(self, total, finite):
            return torch.tensor(1.0)

    for clipper in (Halve(), Fixed()):
        p = nn.Parameter(torch.zeros(4))
        p.grad = torch.full((4,), 3.0)
        r = clipper([p])
        assert r.clipped.item() and r.finite.item() and not r.skipped.item()
        assert torch.linalg.vector_norm(p.grad).item() < 6.0
        p.grad = torch.full((4,), math.nan)
        assert clipper([p]).skipped.item() and clipper.skipped.item() == 1
