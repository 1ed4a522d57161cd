"""Saving and restoring everything a warm-up or a race touches, bit for bit.

A :class:`_Snapshot` of the caller's model (parameters, buffers, ``.grad``, train/eval flags),
optimizer (state, step counts, ``param_groups``, step hooks), ``GradScaler`` and the python,
numpy and torch random states, restored *in place* into the very same objects. The probe
(:mod:`autoclip.probe`) takes one around its warm-up, the response races
(:mod:`autoclip.response`) restore one before every race.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

_PLAIN = (bool, int, float, str, type(None))


class _Snapshot:
    """Everything the warm-up can change, so that :meth:`restore` puts it back bit for bit.

    Tensors are restored *in place* into the original objects (``copy_``), and the original
    objects are put back where they were, so references the caller holds (the optimizer's
    view of the parameters, a scheduler's view of ``param_groups``) stay valid.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: Any,
        params: list[Tensor],
    ) -> None:
        # model: every parameter and buffer slot of every submodule, plus train/eval flags.
        self.training = [(m, m.training) for m in model.modules()]
        self.slots: list[tuple[dict, str, Tensor | None, Tensor | None]] = []
        seen: set[int] = set()
        for m in model.modules():
            for store in (m._parameters, m._buffers):
                for name, t in store.items():
                    clone = None
                    if t is not None and id(t) not in seen:
                        seen.add(id(t))
                        clone = t.detach().clone()
                    self.slots.append((store, name, t, clone))
        # optimizer parameters that are not in the model
        self.extra = [(p, p.detach().clone()) for p in params if id(p) not in seen]
        everything = [t for _, _, t, _ in self.slots if isinstance(t, nn.Parameter)]
        everything += [p for p, _ in self.extra]
        # The warm-up sets .grad to None before each backward, so the original gradient
        # tensors are never written to: keeping the references is enough.
        self.grads = [(p, p.grad) for p in everything]
        self.requires_grad = [(p, p.requires_grad) for p in everything]

        # optimizer: per-parameter state dicts (kept as objects), groups, plain attributes.
        self.optimizer = optimizer
        self.state = [
            (p, s, {k: _save_value(v) for k, v in s.items()}) for p, s in optimizer.state.items()
        ]
        self.groups = [
            (g, {k: _save_value(v) for k, v in g.items() if k != "params"})
            for g in optimizer.param_groups
        ]
        self.param_groups = optimizer.param_groups
        self.opt_attrs = {k: v for k, v in vars(optimizer).items() if isinstance(v, _PLAIN)}
        self.hooks = (
            getattr(optimizer, "_optimizer_step_pre_hooks", None),
            getattr(optimizer, "_optimizer_step_post_hooks", None),
        )

        # GradScaler: its tensors (scale, growth tracker) and per-optimizer records.
        self.scaler = scaler
        if scaler is not None:
            self.scaler_attrs = {k: _save_value(v) for k, v in vars(scaler).items()}

        self.rng = _get_rng({p.device.type for p in params})

    def suspend_hooks(self) -> None:
        """Run the warm-up without the optimizer's own step hooks (an attached clipper...)."""
        from collections import OrderedDict

        opt = self.optimizer
        if self.hooks[0] is not None:
            opt._optimizer_step_pre_hooks = OrderedDict()
        if self.hooks[1] is not None:
            opt._optimizer_step_post_hooks = OrderedDict()

    @torch.no_grad()
    def restore(self) -> None:
        for store, name, t, clone in self.slots:
            store[name] = t
            if clone is not None:
                t.copy_(clone)
        for p, clone in self.extra:
            p.copy_(clone)
        for p, g in self.grads:
            p.grad = g
        for p, flag in self.requires_grad:
            p.requires_grad_(flag)
        for m, flag in self.training:
            m.training = flag

        opt = self.optimizer
        opt.state.clear()
        for p, s, saved in self.state:
            s.clear()
            s.update({k: _load_value(v) for k, v in saved.items()})
            opt.state[p] = s
        for g, saved in self.groups:
            params = g["params"]
            g.clear()
            g["params"] = params
            g.update({k: _load_value(v) for k, v in saved.items()})
        opt.param_groups = self.param_groups
        for k in [k for k, v in vars(opt).items() if isinstance(v, _PLAIN)]:
            if k not in self.opt_attrs:
                delattr(opt, k)  # e.g. ``_opt_called``, which an LR scheduler watches
        for k, v in self.opt_attrs.items():
            setattr(opt, k, v)
        if self.hooks[0] is not None:
            opt._optimizer_step_pre_hooks = self.hooks[0]
        if self.hooks[1] is not None:
            opt._optimizer_step_post_hooks = self.hooks[1]

        if self.scaler is not None:
            for k in list(vars(self.scaler)):
                if k not in self.scaler_attrs:
                    delattr(self.scaler, k)
            for k, v in self.scaler_attrs.items():
                setattr(self.scaler, k, _load_value(v))

        _set_rng(self.rng)


def _get_rng(device_types: set[str]) -> tuple:
    """python, numpy and torch random states, with those of the accelerators in use."""
    devices = {}
    for kind in set(device_types) - {"cpu"}:
        mod = getattr(torch, kind, None)
        if mod is not None and hasattr(mod, "get_rng_state_all"):
            devices[kind] = mod.get_rng_state_all()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        devices.setdefault("cuda", torch.cuda.get_rng_state_all())
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), devices


def _set_rng(states: tuple) -> None:
    py, np_state, cpu, devices = states
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(cpu)
    for kind, per_device in devices.items():
        getattr(torch, kind).set_rng_state_all(per_device)


class _Saved:
    """A tensor saved for in-place restoration: the original object and a copy of its value."""

    __slots__ = ("obj", "value")

    def __init__(self, obj: Tensor) -> None:
        self.obj = obj
        self.value = obj.detach().clone()


def _save_value(v: Any) -> Any:
    if isinstance(v, Tensor):
        return _Saved(v)
    if isinstance(v, _PLAIN):
        return v
    return copy.deepcopy(v)


@torch.no_grad()
def _load_value(v: Any) -> Any:
    if isinstance(v, _Saved):
        v.obj.copy_(v.value)
        return v.obj
    if isinstance(v, _PLAIN):
        return v
    return copy.deepcopy(v)  # a fresh copy each time, so the snapshot stays reusable
