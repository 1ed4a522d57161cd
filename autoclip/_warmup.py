"""The warm-up loop behind :func:`autoclip.probe.probe`: unclipped steps, recorded.

The safety net, the stopping rule and the host/accelerator paths are described in
:mod:`autoclip.probe`; this module is the loop itself, run between the probe's snapshot and
its restore.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import Tensor

from autoclip._collect import _groups, _LayerNorms, _param_names, _Sampler
from autoclip._inputs import _backward, _cycle
from autoclip._trace import GradTrace
from autoclip.divergence import DivergenceCheck
from autoclip.errors import TaskError

# Tests set this to run the accelerator code path (no host reads per step) on the CPU.
_FORCE_DEVICE_PATH = False
# ``1e-6``, as torch.nn.utils.clip_grad_norm_ adds to the norm before dividing.
_NORM_EPS = 1e-6


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
        loss = _backward(model, loss_fn, batch, params, optimizer, scaler, first=step == 0)
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
