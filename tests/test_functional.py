"""autoclip.functional: worked examples, parity with torch's clipping, the building blocks, and
properties (hypothesis) that clipping never increases the norm and is idempotent. AGC's
per-unit reference lives in test_clippers.py, which checks agc_ and the AGC clipper against it.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from autoclip import functional as F

G = [2.0, -6.0, 8.0, -3.0, 5.0]  # the worked example of the clipping literature
NORM_TYPES = [2.0, 1.0, math.inf]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _param(values, dtype=torch.float32) -> nn.Parameter:
    p = nn.Parameter(torch.zeros(len(values), dtype=dtype))
    p.grad = torch.tensor(values, dtype=dtype)
    return p


def _model_with_grads(seed: int, dtype: torch.dtype, drop_grads: bool = True) -> nn.Module:
    """A small random model after one backward pass; a couple of parameters keep grad=None."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 3)
    ).to(dtype)
    x = torch.randn(32, 7, dtype=dtype)
    (model(x).square().mean() * 50).backward()
    if drop_grads:
        model[2].bias.grad = None
        model[3].weight.grad = None
    return model


def _grads(model: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _assert_grads_equal(a: nn.Module, b: nn.Module) -> None:
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert (pa.grad is None) == (pb.grad is None)
        if pa.grad is not None:
            assert pa.grad.dtype == pb.grad.dtype
            assert torch.equal(pa.grad, pb.grad)


# -- worked examples ---------------------------------------------------------------------------


def test_worked_example_value_clip():
    p = _param(G)
    total = F.clip_grad_value_([p], 4.0)
    assert p.grad.tolist() == [2.0, -4.0, 4.0, -3.0, 4.0]
    assert total.item() == pytest.approx(math.sqrt(138), rel=1e-6)


def test_worked_example_norm_clip():
    p = _param(G, torch.float64)
    total = F.clip_grad_norm_([p], 6.0)
    norm = math.sqrt(138)  # 4 + 36 + 64 + 9 + 25
    assert total.item() == pytest.approx(norm, rel=1e-12)
    expected = [g * 6.0 / (norm + 1e-6) for g in G]
    assert p.grad.tolist() == pytest.approx(expected, rel=1e-9)
    # The teaching values, rounded to 4 decimals, follow from the exact ones.
    assert [round(g, 4) for g in p.grad.tolist()] == [1.0215, -3.0645, 4.0860, -1.5323, 2.5538]
    assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(6.0, rel=1e-6)


def test_worked_example_float32_within_eps():
    p = _param(G)
    F.clip_grad_norm_([p], 6.0)
    expected = torch.tensor([g * 6.0 / (math.sqrt(138) + 1e-6) for g in G])
    torch.testing.assert_close(p.grad, expected, rtol=1e-6, atol=0)


# -- parity with torch -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("max_norm", [0.05, 1e3])  # clips / does not clip
def test_clip_grad_norm_matches_torch(dtype, norm_type, max_norm):
    ours, ref = _model_with_grads(0, dtype), _model_with_grads(0, dtype)
    total = F.clip_grad_norm_(ours.parameters(), max_norm, norm_type)
    if dtype in F.LOW_PRECISION:
        # Measured in float32 (torch measures in bfloat16): the reference is torch's clip of
        # the gradients upcast to float32, rounded back.
        ups = []
        for p in ref.parameters():
            up = nn.Parameter(p.detach().float())
            up.grad = None if p.grad is None else p.grad.float()
            ups.append(up)
        expected = torch.nn.utils.clip_grad_norm_(ups, max_norm, norm_type)
        for p, up in zip(ref.parameters(), ups, strict=True):
            if p.grad is not None:
                p.grad.copy_(up.grad)
        assert total.dtype == torch.float32
        torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    else:
        expected = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm, norm_type)
        assert total.dtype == expected.dtype
        assert torch.equal(total, expected)
    _assert_grads_equal(ours, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clip_value", [0.01, 1e3])
def test_clip_grad_value_matches_torch(dtype, clip_value):
    ours, ref = _model_with_grads(1, dtype), _model_with_grads(1, dtype)
    expected_total = F.total_norm([g for g in _grads(ref) if g is not None])
    total = F.clip_grad_value_(ours.parameters(), clip_value)
    torch.nn.utils.clip_grad_value_(ref.parameters(), clip_value)
    _assert_grads_equal(ours, ref)
    assert torch.equal(total, expected_total)


def test_total_norm_of_half_gradients_is_float32_and_finite():
    big = [torch.full((16,), 28672.0, dtype=torch.float16), torch.ones(4, dtype=torch.float16)]
    assert not torch.isfinite(torch.nn.utils.get_total_norm(big))  # what torch gives
    total = F.total_norm(big)
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(math.sqrt(16 * 28672.0**2 + 4), rel=1e-6)
    mixed = [*big, torch.ones(9, dtype=torch.float32)]
    assert F.total_norm(mixed).item() == pytest.approx(math.sqrt(16 * 28672.0**2 + 13), rel=1e-6)


def test_foreach_false_gives_the_same_result():
    a, b = _model_with_grads(2, torch.float32), _model_with_grads(2, torch.float32)
    ta = F.clip_grad_norm_(a.parameters(), 0.1, foreach=True)
    tb = F.clip_grad_norm_(b.parameters(), 0.1, foreach=False)
    torch.testing.assert_close(ta, tb)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad)


def test_no_gradients_gives_zero_norm_and_touches_nothing():
    p = nn.Parameter(torch.ones(3))
    assert F.clip_grad_norm_([p], 1.0).item() == 0.0
    assert F.clip_grad_value_([p], 1.0).item() == 0.0
    assert p.grad is None


def test_single_tensor_argument():
    p = _param(G)
    F.clip_grad_norm_(p, 6.0)
    assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(6.0, rel=1e-5)


# -- building blocks ---------------------------------------------------------------------------


def test_norm_clip_coef_is_clamped_at_one():
    coef = F.norm_clip_coef(torch.tensor([1.0, 10.0]), 5.0)
    assert coef[0].item() == 1.0
    assert coef[1].item() == pytest.approx(0.5, rel=1e-6)


def test_scale_multiplies_every_dtype_group():
    grads = [torch.ones(3), torch.ones(2, dtype=torch.float64), torch.ones(4)]
    F.scale_(grads, torch.tensor(0.5))
    assert all(torch.equal(g, torch.full_like(g, 0.5)) for g in grads)


def test_zero_nonfinite_clears_only_a_nonfinite_step():
    finite_grads = [torch.tensor([1.0, -2.0])]
    F.zero_nonfinite_(finite_grads, torch.tensor(True))
    assert finite_grads[0].tolist() == [1.0, -2.0]
    bad = [torch.tensor([0.0, math.nan]), torch.tensor([math.inf, -math.inf, 0.0])]
    F.zero_nonfinite_(bad, torch.tensor(False))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in bad)


def test_unitwise_norm_shapes_and_values():
    w = torch.randn(5, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    n = F.unitwise_norm(w)
    assert n.shape == (5, 1, 1, 1)
    torch.testing.assert_close(n.flatten(), w.flatten(1).norm(dim=1))
    b = torch.randn(5)
    assert F.unitwise_norm(b).shape == ()
    torch.testing.assert_close(F.unitwise_norm(b), b.norm())


def test_norm_from_unitwise_equals_total_norm():
    model = _model_with_grads(3, torch.float32)
    grads = [g for g in _grads(model) if g is not None]
    torch.testing.assert_close(
        F.norm_from_unitwise(F.unitwise_norms(grads)), F.total_norm(grads), rtol=1e-6, atol=0
    )
    assert F.norm_from_unitwise([]).item() == 0.0


# -- properties --------------------------------------------------------------------------------

grads_strategy = st.lists(
    st.lists(
        st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32),
        min_size=1,
        max_size=20,
    ),
    min_size=1,
    max_size=5,
)
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


def _params_from(values) -> list[nn.Parameter]:
    return [_param(v) for v in values]


def _norm(params, norm_type=2.0) -> float:
    return F.total_norm([p.grad for p in params], norm_type).item()


@PROPERTY_SETTINGS
@given(grads_strategy, st.floats(1e-3, 1e4), st.sampled_from(NORM_TYPES))
def test_norm_clip_never_increases_norm_and_is_idempotent(values, max_norm, norm_type):
    params = _params_from(values)
    before = _norm(params, norm_type)
    F.clip_grad_norm_(params, max_norm, norm_type)
    once = [p.grad.clone() for p in params]
    after = _norm(params, norm_type)
    assert after <= before
    assert after <= max_norm * (1 + 1e-5)
    F.clip_grad_norm_(params, max_norm, norm_type)
    # The second pass may still scale by max_norm / (max_norm + 1e-6): torch's epsilon.
    for p, g in zip(params, once, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5 + 1e-6 / max_norm, atol=0)


@PROPERTY_SETTINGS
@given(grads_strategy, st.floats(1e-3, 1e4))
def test_value_clip_never_increases_norm_and_is_idempotent(values, clip_value):
    params = _params_from(values)
    before = _norm(params)
    F.clip_grad_value_(params, clip_value)
    once = [p.grad.clone() for p in params]
    assert _norm(params) <= before
    assert _norm(params, math.inf) <= torch.tensor(clip_value).item()  # in float32
    F.clip_grad_value_(params, clip_value)
    assert all(torch.equal(p.grad, g) for p, g in zip(params, once, strict=True))


@PROPERTY_SETTINGS
@given(grads_strategy, st.floats(1e-4, 10.0))
def test_agc_never_increases_norm_and_is_idempotent(values, clipping):
    params = _params_from(values)
    gen = torch.Generator().manual_seed(len(values))
    for p in params:
        p.data = torch.randn(p.shape, generator=gen)
    before = _norm(params)
    F.agc_(params, clipping)
    once = [p.grad.clone() for p in params]
    assert _norm(params) <= before * (1 + 1e-6)
    F.agc_(params, clipping)
    for p, g in zip(params, once, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=0)


def test_large_tensors_are_clamped_like_torch():
    """Above F._LARGE elements per tensor the host clamps tensor by tensor; same result."""
    gen = torch.Generator().manual_seed(0)
    ours = [nn.Parameter(torch.zeros(300, 200)) for _ in range(2)]
    ref = [nn.Parameter(torch.zeros(300, 200)) for _ in range(2)]
    for a, b in zip(ours, ref, strict=True):
        a.grad = torch.randn(300, 200, generator=gen)
        b.grad = a.grad.clone()
    assert ours[0].numel() >= F._LARGE
    F.clip_grad_value_(ours, 0.5)
    torch.nn.utils.clip_grad_value_(ref, 0.5)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, ref, strict=True))
