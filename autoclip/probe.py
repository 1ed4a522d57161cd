"""The warm-up probe: a short run without clipping that records what the gradients look like.

``probe(model, optimizer, loss_fn, batches, steps=100)`` trains the caller's own model for a few
steps, exactly as training would (same optimizer, same data, same AMP scaler) but without a
clipper, and records per step

* the global 2-norm of the gradient (before anything touches it), the loss, and the 2-norm of
  every parameter tensor's gradient (one ``torch._foreach_norm`` kernel per device and dtype);
* at ``samples`` evenly spaced steps, a fixed random sample of gradient elements ``|g|`` (for
  value clipping) and of unit-wise ratios ``||G_i|| / ||W_i||`` of weight rows (for AGC).

Afterwards the caller's model (parameters, buffers, ``.grad``, train/eval flags), optimizer
(state, step counts, ``param_groups``), ``GradScaler`` and the python, numpy and torch random
states are put back exactly as they were, bit for bit (the pattern of Lightning's ``lr_find``),
into the very same tensor objects. The copy is kept in memory on the tensors' own device, so
the probe needs room for a second copy of the parameters, buffers and optimizer state.
The optimizer's own step hooks (e.g. an attached clipper) are suspended during the probe so
the warm-up is really unclipped and leaves no trace in them.

The safety net. Some models diverge within a few unclipped steps, and a probe that dies at
step 8 says little. So:

* a step whose gradient is NaN/inf is recorded (norm ``inf``/``nan``) and its update is
  skipped; with a ``GradScaler`` that is the scaler's own skip;
* with ``safety_clip=k`` (default 5), an update whose norm exceeds ``k`` times the median of
  the finite norms seen so far is scaled down to that bound. The *raw* norm is what is
  recorded, so a spike still shows in the trace at full size. The bound is five times what
  the proposal clips at (about the median), so ordinary steps train exactly as unclipped
  training would; only blow-ups are capped, so that one early blow-up does not leave the rest
  of the warm-up measuring a wrecked model (the first step has no median yet and is never
  capped);
* the probe stops early, with the reason recorded, when the model diverges (the loss becomes
  NaN/inf or 1000x its first value, or ten steps in a row had non-finite gradients: the
  training loop's rule, :mod:`autoclip.divergence`), or when the batches run out.

Overhead. Nothing on the per-step path waits for an accelerator: losses and norms stay on the
device and move to the host every ``sync_every`` steps. On the host (CPU tensors) reading a
number costs nothing, so there the safety net branches in Python and skips the optimizer step
outright; on an accelerator it multiplies by a clamped coefficient instead (a non-finite step
then becomes a zero-gradient step, as with the clippers' ``nonfinite="skip"``). With a
``GradScaler``, ``scaler.step`` reads its inf flag on the host each step, as it does in
training.

>>> import torch
>>> from torch import nn
>>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
>>> batches = [(x[i : i + 16], x[i : i + 16].sum(1, keepdim=True)) for i in range(0, 64, 16)]
>>> loss_fn = lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1])
>>> model = nn.Linear(4, 1)
>>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
>>> before = model.weight.detach().clone()
>>> trace = probe(model, optimizer, loss_fn, batches, steps=20)
>>> trace.steps_run, trace.layer_names, torch.equal(model.weight, before)
(20, ('weight', 'bias'), True)
"""

from __future__ import annotations

import bisect
import copy
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from autoclip import serialize
from autoclip.divergence import DivergenceCheck
from autoclip.errors import ConfigError, TaskError
from autoclip.task import check_loss_fn, check_owns

__all__ = ["GradTrace", "probe", "probe_task"]

# 5x the running median: five times the threshold the proposal itself would pick, so it only
# touches blow-ups; at 20x, blow-ups that build up over a few steps (the median climbing with
# them) got through and wrecked the warm-ups of the digits_mlp and char_lstm studies.
SAFETY_CLIP = 5.0
# Gradient elements (and AGC unit ratios) kept at each sampled step: a few thousand from the
# settled sampled steps give a stable 99th percentile, and a trace's JSON stays small.
SAMPLE_SIZE = 1024
# Sampled steps spread over the warm-up.
SAMPLES = 10
# When the warm-up has diverged: the training loop's one rule (autoclip/divergence.py).
# Host copies every 25 steps on an accelerator; free on the host, where it is every step.
SYNC_EVERY = 25
# Tests set this to run the accelerator code path (no host reads per step) on the CPU.
_FORCE_DEVICE_PATH = False
# AGC's eps (Brock et al. 2021): a zero-initialised weight counts as this norm.
AGC_EPS = 1e-3
# ``1e-6``, as torch.nn.utils.clip_grad_norm_ adds to the norm before dividing.
_NORM_EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# The trace
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GradTrace(serialize.Serializable):
    """What the warm-up saw, step by step. Plain numbers (host floats), so it serialises.

    >>> trace = GradTrace(norms=(1.0, float("inf"), 2.0), losses=(1.0, 0.9, 0.8),
    ...                   layer_names=("w",), layer_norms=((1.0,), (float("inf"),), (2.0,)))
    >>> trace.steps_run, trace.finite_norms
    (3, (1.0, 2.0))
    >>> GradTrace.from_json(trace.to_json()).norms  # strict JSON, exact round trip
    (1.0, inf, 2.0)

    Attributes:
        norms: global 2-norm of the raw gradient at each step (``inf``/``nan`` where the
            gradient was non-finite); never reduced by the safety net.
        losses: training loss at each step.
        layer_names: one name per parameter tensor that the optimizer updates.
        layer_norms: ``[step][layer]`` 2-norm of each tensor's raw gradient (0 for a tensor
            that had no gradient that step).
        layer_numels: number of elements per parameter tensor.
        weight_norms: 2-norm of each parameter tensor before the warm-up.
        value_sample: ``|g|`` of gradient elements drawn uniformly from all trainable
            elements (fixed positions), at the steps in ``sample_steps``, concatenated.
        sample_steps: the steps at which ``value_sample`` and ``agc_ratio_sample`` were taken.
        value_counts: how many of ``value_sample`` come from each of ``sample_steps``.
        agc_ratio_sample: unit-wise ``||G_i|| / ||W_i||`` of a fixed sample of units (rows of
            the weight matrices), at the same steps; NaN for a unit whose weight norm is
            below AGC's eps (1e-3), such as a zero-initialised layer.
        agc_ratio_counts: how many of ``agc_ratio_sample`` come from each sampled step.
        safety_clipped: whether the safety net scaled that step's update down.
        skipped: whether that step's update was skipped (non-finite gradient).
        planned_steps: the ``steps`` asked for.
        stopped_early: the warm-up ended before ``planned_steps``; ``reason`` says why.
        diverged: it ended because the model diverged (a NaN/inf loss, a loss 1000x its first
            value, or ten non-finite gradients in a row), not because the batches ran out.
        safety_clip: the safety multiple used (None: disabled).
        optimizer: the optimizer's class name; ``lr``: its first group's learning rate.
        amp: whether a ``GradScaler`` was used (norms are of the unscaled gradients).
    """

    norms: tuple[float, ...]
    losses: tuple[float, ...]
    layer_names: tuple[str, ...]
    layer_norms: tuple[tuple[float, ...], ...]
    layer_numels: tuple[int, ...] = ()
    weight_norms: tuple[float, ...] = ()
    value_sample: tuple[float, ...] = ()
    sample_steps: tuple[int, ...] = ()
    value_counts: tuple[int, ...] = ()
    agc_ratio_sample: tuple[float, ...] = ()
    agc_ratio_counts: tuple[int, ...] = ()
    safety_clipped: tuple[bool, ...] = ()
    skipped: tuple[bool, ...] = ()
    planned_steps: int = 0
    stopped_early: bool = False
    reason: str | None = None
    diverged: bool = False
    safety_clip: float | None = SAFETY_CLIP
    optimizer: str = ""
    lr: float | None = None
    amp: bool = False

    _TEXT_FIELDS = ("layer_names", "reason", "optimizer")

    def __post_init__(self) -> None:
        n = len(self.norms)
        if len(self.losses) != n or len(self.layer_norms) != n:
            raise ConfigError(
                "GradTrace needs one loss and one row of layer norms per step, but got "
                f"{n} norms, {len(self.losses)} losses, {len(self.layer_norms)} rows"
            )
        for row in self.layer_norms:
            if len(row) != len(self.layer_names):
                raise ConfigError(
                    f"each layer_norms row must have {len(self.layer_names)} entries (one per "
                    f"layer name), but one has {len(row)}"
                )

    @property
    def steps_run(self) -> int:
        """Steps actually recorded."""
        return len(self.norms)

    @property
    def finite_norms(self) -> tuple[float, ...]:
        """The finite entries of ``norms``, in order."""
        return tuple(x for x in self.norms if math.isfinite(x))


# ---------------------------------------------------------------------------------------------
# Saving and restoring everything the warm-up touches
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# The warm-up
# ---------------------------------------------------------------------------------------------
def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    """Batches forever from a re-iterable; an iterator is consumed once and then stops."""
    if isinstance(batches, Iterator):
        yield from batches
        return
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            return


def _check_loss(loss: Any) -> None:
    if not isinstance(loss, Tensor):
        raise TaskError(f"loss_fn must return a tensor, but returned {type(loss).__name__}")
    if loss.numel() != 1:
        raise TaskError(
            f"loss_fn must return a scalar, but returned shape {tuple(loss.shape)}; "
            "reduce it with .mean() or .sum()"
        )
    if not loss.requires_grad:
        raise TaskError(
            "loss_fn returned a loss that does not require grad; compute it from the model's "
            "output without torch.no_grad() or .detach()"
        )


def _param_names(model: nn.Module, params: list[Tensor]) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    return [names.get(id(p), f"param{i}") for i, p in enumerate(params)]


class _Sampler:
    """Fixed random positions (elements for ``|g|``, units for AGC), drawn once."""

    def __init__(self, params: list[Tensor], size: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)  # its own stream: the caller's is untouched
        numels = [p.numel() for p in params]
        # AGC units: the rows of weight matrices (and filters). Biases and gains are left out
        # of the sample: as one "unit" each, often initialised at zero, their ratio says
        # little about the clipping ratio the weights need (only if there is no matrix at
        # all are they used).
        has_matrix = any(p.ndim > 1 for p in params)
        units = [p.shape[0] if p.ndim > 1 else (0 if has_matrix else 1) for p in params]
        self.elements = self._split(numels, size, gen, params)
        self.units = self._split(units, size, gen, params)

    @staticmethod
    def _split(counts, size, gen, params) -> list[Tensor | None]:
        total = sum(counts)
        if total == 0:
            return [None] * len(counts)
        if total <= size:
            flat = torch.arange(total)
        else:  # with replacement: O(size), and repeats are rare when total >> size
            flat = torch.randint(total, (size,), generator=gen).sort().values
        bounds = torch.tensor([0, *np.cumsum(counts).tolist()])
        out = []
        for i, p in enumerate(params):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            idx = flat[(flat >= lo) & (flat < hi)] - lo
            out.append(idx.to(p.device) if idx.numel() else None)
        return out

    @torch.no_grad()
    def take(self, params: list[Tensor], grads: list[Tensor | None]) -> tuple[Tensor, Tensor]:
        """``(|g| sample, unit ratio sample)`` as float32 tensors on the first device."""
        device = params[0].device
        values, ratios = [], []
        for p, g, e_idx, u_idx in zip(params, grads, self.elements, self.units, strict=True):
            if g is None:
                continue
            if e_idx is not None:
                values.append(g.reshape(-1).index_select(0, e_idx).abs().float().to(device))
            if u_idx is not None:
                if p.ndim > 1:
                    g_u = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1)
                    w_u = torch.linalg.vector_norm(p.reshape(p.shape[0], -1), dim=1)
                    g_u, w_u = g_u.index_select(0, u_idx), w_u.index_select(0, u_idx)
                else:
                    g_u = torch.linalg.vector_norm(g).reshape(1)
                    w_u = torch.linalg.vector_norm(p).reshape(1)
                # A unit whose weights are (still) below eps, e.g. a zero-initialised layer,
                # has no meaningful ratio: AGC bounds it by eps * clipping whatever it is.
                r = torch.where(w_u >= AGC_EPS, g_u / w_u.clamp(min=AGC_EPS), math.nan)
                ratios.append(r.float().to(device))
        empty = torch.zeros(0, device=device)
        return (torch.cat(values) if values else empty, torch.cat(ratios) if ratios else empty)


class _LayerNorms:
    """Per-tensor gradient norms with one ``_foreach_norm`` per (device, dtype) group."""

    def __init__(self, params: list[Tensor]) -> None:
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault((p.device, p.dtype), []).append(i)
        self.groups = list(groups.values())
        self.device = params[0].device
        order = [i for g in self.groups for i in g]
        # Stacking group by group gives the layers in `order`; this puts them back.
        self.inverse = None
        if order != list(range(len(params))):
            self.inverse = torch.argsort(torch.tensor(order)).to(self.device)
        self.n = len(params)

    def __call__(self, grads: list[Tensor | None]) -> Tensor:
        """``[n_layers]`` float32 norms (0 where a gradient is None)."""
        parts = []
        for idx in self.groups:
            gs = [grads[i] for i in idx]
            if all(g is not None for g in gs):
                norms = torch._foreach_norm(gs, 2, dtype=torch.float32)
                parts.append(torch.stack(norms).to(self.device))
            else:
                present = [g for g in gs if g is not None]
                norms = iter(torch._foreach_norm(present, 2, dtype=torch.float32))
                zero = torch.zeros((), device=self.device)
                parts.append(
                    torch.stack([zero if g is None else next(norms).to(self.device) for g in gs])
                )
        layer = parts[0] if len(parts) == 1 else torch.cat(parts)
        if self.inverse is not None:
            layer = layer.index_select(0, self.inverse)
        return layer


def _params_of(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The optimizer's parameters that require grad, each once, in group order."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TaskError(
            f"optimizer must be a torch.optim.Optimizer, but got {type(optimizer).__name__}"
        )
    params: list[Tensor] = []
    seen: set[int] = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    if not params:
        raise TaskError("the optimizer has no parameters that require grad")
    return params


def _validate(
    steps: int, safety_clip: float | None, sample_size: int, samples: int, sync_every: int
) -> None:
    if not (isinstance(steps, int) and steps >= 1):
        raise ConfigError(f"`steps` must be an int >= 1, but got {steps!r}")
    if safety_clip is not None and not (
        isinstance(safety_clip, int | float) and math.isfinite(safety_clip) and safety_clip > 1
    ):
        raise ConfigError(
            f"`safety_clip` must be a number > 1 (a multiple of the running median norm) or "
            f"None to disable the safety net, but got {safety_clip!r}"
        )
    for name, v, low in (
        ("sample_size", sample_size, 0),
        ("samples", samples, 0),
        ("sync_every", sync_every, 1),
    ):
        if not (isinstance(v, int) and v >= low):
            raise ConfigError(f"`{name}` must be an int >= {low}, but got {v!r}")


def probe(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batches: Iterable[Any],
    steps: int = 100,
    *,
    scaler: Any = None,
    safety_clip: float | None = SAFETY_CLIP,
    sample_size: int = SAMPLE_SIZE,
    samples: int = SAMPLES,
    sync_every: int = SYNC_EVERY,
    progress: Callable[[int, int], None] | None = None,
) -> GradTrace:
    """Warm up ``model`` for ``steps`` unclipped steps, record its gradients, then undo it all.

    Args:
        model, optimizer: the caller's own, ready to train; both are left exactly as found.
        loss_fn: ``(model, batch) -> scalar tensor``; run under ``autocast`` inside it if
            training uses AMP.
        batches: a re-iterable (a list, a DataLoader: cycled as needed) or an iterator (used
            once; the probe stops early if it runs out, and cannot give back what it read).
        steps: warm-up length (100: enough for the norms to settle on most models, and for
            a 99th percentile from the settled part).
        scaler: the ``torch.amp.GradScaler`` training will use, if any: the probe scales the
            loss, unscales before measuring (so the norms are the true ones), and lets the
            scaler skip inf/NaN steps. Its state is restored afterwards.
        safety_clip: scale an update down to ``safety_clip`` x the running median norm when
            it exceeds that (the raw norm is still recorded); None disables it.
        sample_size: gradient elements, and AGC units, sampled at each sampled step.
        samples: number of sampled steps, spread evenly over the warm-up.
        sync_every: on an accelerator, copy losses and norms to the host every this many
            steps (stopping conditions are checked then).
        progress: ``(step, total)`` called after each step, e.g. to drive a progress bar.

    Returns:
        A :class:`GradTrace`. If the run could not continue, ``stopped_early`` is True and
        ``reason`` says why; the steps recorded until then are kept.
    """
    _validate(steps, safety_clip, sample_size, samples, sync_every)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TaskError(
            f"optimizer must be a torch.optim.Optimizer, but got {type(optimizer).__name__}"
        )
    if not isinstance(model, nn.Module):
        raise TaskError(f"model must be a torch.nn.Module, but got {type(model).__name__}")
    check_loss_fn(loss_fn)
    check_owns(model, optimizer)
    params = _params_of(optimizer)
    snapshot = _Snapshot(model, optimizer, scaler, params)
    try:
        snapshot.suspend_hooks()
        with torch.enable_grad():
            return _warm_up(
                model,
                optimizer,
                loss_fn,
                batches,
                steps,
                params,
                scaler=scaler,
                safety_clip=safety_clip,
                sample_size=sample_size,
                samples=samples,
                sync_every=sync_every,
                progress=progress,
            )
    finally:
        snapshot.restore()


def _warm_up(
    model,
    optimizer,
    loss_fn,
    batches,
    steps,
    params,
    *,
    scaler,
    safety_clip,
    sample_size,
    samples,
    sync_every,
    progress,
) -> GradTrace:
    device = params[0].device
    # On the host a "sync" is free: decide in Python, and skip steps outright.
    host = not _FORCE_DEVICE_PATH and all(p.device.type == "cpu" for p in params)
    layer_norms = _LayerNorms(params)
    sampler = _Sampler(params, sample_size) if sample_size and samples else None
    every = max(1, steps // samples) if samples else 0
    with torch.no_grad():
        weight_norms = layer_norms([p.detach() for p in params]).tolist()
    model.train()

    # Per-step records. Host: python numbers. Device: 0-dim tensors, flushed in blocks.
    losses: list[float] = []
    norms: list[float] = []
    rows: list[Tensor] = []  # [n_layers] per step, stacked once at the end
    clipped: list[bool] = []
    skipped: list[bool] = []
    pending: list[tuple[Tensor, Tensor, Tensor]] = []  # device: (loss, norm, safety-clipped)
    sample_steps: list[int] = []
    values: list[Tensor] = []
    ratios: list[Tensor] = []
    history: list[float] = []  # host: sorted finite norms, for the running median
    hist_buf = torch.full((steps,), math.nan, device=device)  # device: the same, unsorted
    rule = DivergenceCheck(skips_nonfinite=True)  # the probe skips a non-finite step itself

    def check(step: int, loss: float, norm: float) -> str | None:
        """The stopping rule of training (autoclip/divergence.py), each recorded step in order."""
        reason = rule(step, loss, math.isfinite(norm))
        return None if reason is None else f"{reason}; the model diverged"

    def flush() -> str | None:
        if not pending:
            return None
        block = torch.stack([torch.stack(r) for r in pending]).double().cpu().tolist()
        pending.clear()
        for loss, norm, was_clipped in block:
            losses.append(loss)
            norms.append(norm)
            clipped.append(bool(was_clipped))
            skipped.append(not math.isfinite(norm))
            reason = check(len(losses) - 1, loss, norm)
            if reason is not None:
                return reason
        return None

    stream = _cycle(batches)
    reason = None
    for step in range(steps):
        try:
            batch = next(stream)
        except StopIteration:
            if step == 0:
                raise TaskError("batches is empty: give at least one batch") from None
            reason = f"the batches ran out after {step} steps"
            break
        for p in params:
            p.grad = None
        loss = loss_fn(model, batch)
        if step == 0:
            _check_loss(loss)
        loss = loss.reshape(())
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # measure (and clip) the true gradients
        else:
            loss.backward()
        grads = [p.grad for p in params]
        with torch.no_grad():
            layer = layer_norms(grads)  # [n_layers]
            total = torch.linalg.vector_norm(layer)
            if sampler is not None and (step + 1) % every == 0 and len(sample_steps) < samples:
                v, r = sampler.take(params, grads)
                sample_steps.append(step)
                values.append(v)
                ratios.append(r)
            present = [g for g in grads if g is not None]
            if host:
                norm_f, loss_f = float(total), float(loss)
                finite = math.isfinite(norm_f)
                was_clipped = False
                if finite and safety_clip is not None and history:
                    bound = safety_clip * history[len(history) // 2]
                    if norm_f > bound:
                        torch._foreach_mul_(present, bound / (norm_f + _NORM_EPS))
                        was_clipped = True
                if finite:
                    bisect.insort(history, norm_f)
                if scaler is not None:
                    scaler.step(optimizer)  # skips the step itself if it found inf/NaN
                    scaler.update()
                elif finite:
                    optimizer.step()
                losses.append(loss_f)
                norms.append(norm_f)
                clipped.append(was_clipped)
                skipped.append(not finite)
                rows.append(layer)
                reason = check(step, loss_f, norm_f)
            else:
                finite = torch.isfinite(total)
                coef = torch.ones((), device=device)
                if safety_clip is not None:
                    median = torch.nanmedian(hist_buf)  # NaN until a finite norm was seen
                    bound = torch.nan_to_num(safety_clip * median, nan=math.inf)
                    coef = torch.clamp(bound / (total + _NORM_EPS), max=1.0)
                coef = torch.where(finite, coef, torch.zeros_like(coef))
                for (dev, _), group in _groups(present).items():
                    torch._foreach_mul_(group, coef.to(dev))
                if scaler is None:
                    for g in present:  # clear NaN/inf, no-op on finite gradients
                        g.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                hist_buf[step] = torch.where(finite, total, torch.full_like(total, math.nan))
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                pending.append((loss.detach().float(), total, (coef < 1.0) & finite))
                rows.append(layer)
                if (step + 1) % sync_every == 0 or step == steps - 1:
                    reason = flush()
        if progress is not None:
            progress(step + 1, steps)
        if reason is not None:
            break
    if not host and reason is None:
        reason = flush()

    n = len(norms)  # a device-side stop is found at a flush: drop the steps after it
    layer_rows = torch.stack(rows[:n]).cpu().tolist() if n else []
    kept = [i for i, s in enumerate(sample_steps) if s < n]
    value_t = [values[i].cpu() for i in kept]
    ratio_t = [ratios[i].cpu() for i in kept]
    lr = optimizer.param_groups[0].get("lr")
    return GradTrace(
        norms=tuple(norms),
        losses=tuple(losses[:n]),
        layer_names=tuple(_param_names(model, params)),
        layer_norms=tuple(tuple(r) for r in layer_rows),
        layer_numels=tuple(p.numel() for p in params),
        weight_norms=tuple(weight_norms),
        value_sample=tuple(torch.cat(value_t).tolist()) if value_t else (),
        sample_steps=tuple(sample_steps[i] for i in kept),
        value_counts=tuple(t.numel() for t in value_t),
        agc_ratio_sample=tuple(torch.cat(ratio_t).tolist()) if ratio_t else (),
        agc_ratio_counts=tuple(t.numel() for t in ratio_t),
        safety_clipped=tuple(clipped[:n]),
        skipped=tuple(skipped[:n]),
        planned_steps=steps,
        stopped_early=reason is not None,
        diverged=reason is not None and reason.endswith("diverged"),
        reason=reason,
        safety_clip=None if safety_clip is None else float(safety_clip),
        optimizer=type(optimizer).__name__,
        lr=float(lr) if isinstance(lr, int | float | Tensor) else None,
        amp=scaler is not None,
    )


def _groups(tensors: list[Tensor]) -> dict[tuple, list[Tensor]]:
    out: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        out.setdefault((t.device, t.dtype), []).append(t)
    return out


def probe_task(task: Any, steps: int = 100, **kw: Any) -> GradTrace:
    """:func:`probe` a fresh model and optimizer from ``task.build()``.

    >>> import torch
    >>> from torch import nn
    >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    >>> batches = [(x[i : i + 16], x[i : i + 16].sum(1, keepdim=True)) for i in range(0, 64, 16)]
    >>> loss_fn = lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1])
    >>> import autoclip
    >>> task = autoclip.Task(lambda: nn.Linear(4, 1), lambda p: torch.optim.SGD(p, lr=0.1),
    ...                      loss_fn, batches, steps=20, name="doc")
    >>> probe_task(task, steps=10).steps_run
    10

    The task's own seed fixes the model; the global random state is restored afterwards,
    as for :func:`probe`. Keyword arguments go to :func:`probe`.
    """
    from autoclip.task import load_task

    task = load_task(task)
    rng = _get_rng(set())
    try:
        # build() seeds everything, so the warm-up draws the same dropout masks and data
        # order as a training run of this task would.
        model, optimizer = task.build()
        kw.setdefault("scaler", task.make_scaler())  # the task's AMP, as training uses it
        return probe(model, optimizer, task.compute_loss, task.batches, steps, **kw)
    finally:
        _set_rng(rng)
