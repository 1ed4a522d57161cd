"""On a CUDA device, no clipper's hot path waits for the GPU: every call, and every attached
optimizer step (plain, fused, capturable; with a skip policy on), runs under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any host<->device sync.

Skipped without a GPU; the CPU stand-in is ``test_no_host_sync_beyond_the_documented_host_
branches`` in test_clippers.py (a profiler count of ``aten::_local_scalar_dense``).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from autoclip import create_clipper, list_clippers

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

REQUIRED = {"norm": {"max_norm": 0.5}, "value": {"clip_value": 1e-3}}
VARIANTS = {
    "quantile": [{"window": 8}, {"method": "stream"}, {"window": 8, "spike": "skip"}],
    "zscore": [{"warmup_steps": 3}, {"warmup_steps": 3, "spike": "skip"}],
}


def _configs():
    for info in list_clippers():
        base = REQUIRED.get(info.name, {})
        yield pytest.param(info.name, base, id=info.name)
        for extra in VARIANTS.get(info.name, []):
            label = "-".join(f"{k}={v}" for k, v in extra.items())
            yield pytest.param(info.name, {**base, **extra}, id=f"{info.name}-{label}")


@contextlib.contextmanager
def _no_sync():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4)).cuda()


def _backward(model: nn.Module, step: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(step)
    x = torch.randn(16, 8, device="cuda", generator=gen)
    scale = 50.0 if step % 7 == 6 else 1.0  # occasional spikes
    (model(x).square().mean() * scale).backward()


@pytest.mark.parametrize("name, params", list(_configs()))
def test_calling_a_clipper_never_syncs(name, params):
    model = _model()
    clipper = create_clipper(name, **params)
    for step in range(6):  # past warm-up; state moved to the device, tables built
        model.zero_grad()
        _backward(model, step)
        clipper(list(model.parameters()))
    for step in range(6, 14):
        model.zero_grad()
        _backward(model, step)
        with _no_sync():
            clipper(list(model.parameters()))


OPTIMIZERS = {
    "sgd-foreach": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=True),
    "adam-fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
    "adamw-capturable": lambda ps: torch.optim.AdamW(ps, lr=1e-3, capturable=True),
}


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("name, params", list(_configs()))
def test_an_attached_step_never_syncs(name, params, opt_name):
    model = _model()
    opt = OPTIMIZERS[opt_name](model.parameters())
    create_clipper(name, **params).attach(opt)
    for step in range(14):
        opt.zero_grad()
        _backward(model, step)
        if step < 6:
            opt.step()
        else:
            with _no_sync():
                opt.step()
