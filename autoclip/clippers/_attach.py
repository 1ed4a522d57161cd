"""``clipper.attach(optimizer)``: clip before every step, and make a skipped step a true skip.

The pre hook clips the optimizer's parameters. Under ``torch.amp.GradScaler`` a plain or
foreach optimizer is only stepped (and so only clipped) after the scaler unscaled its
gradients and found them finite; a *fused* optimizer is stepped with the gradients still
scaled and with ``optimizer.grad_scale`` / ``optimizer.found_inf`` set, which the hook hands
to the clipper so that it measures the unscaled norm (and ignores a step the scaler skips).

Distributed: under DDP the hook runs after the gradients were all-reduced, so every rank
clips the same global norm; FSDP2 gradients are DTensors, measured globally by
:func:`autoclip.functional.total_norm`. FSDP1's flat per-rank shards are refused (their norm
would be per rank).

When the clipper may skip (``nonfinite="skip"``, ``spike="skip"``), a skipped step must change
nothing of the optimizer: not the weights, moments, step counters or weight decay. Zeroing the
gradients is not enough (momentum, Adam's moments and decoupled weight decay still move the
weights, and step counters still count). How the step is skipped, cheapest first:

* **host** (the clipper's decision lives in host memory, i.e. training on CPU): reading it is
  free, so on a skipped step every ``p.grad`` is set to ``None`` for the duration of the step;
  every torch optimizer leaves a parameter without a gradient untouched (no state is even
  created). Cost: nothing on a normal step.
* **fused optimizer on an accelerator**: the decision is written into ``optimizer.found_inf``
  (combined with the scaler's), which the fused kernels honour on the device: no update, and
  the step counters are decremented back. Cost: one tiny kernel. A skipped *first* step still
  creates the (zero) state the fused step allocates.
* **other optimizers on an accelerator**: the parameters and every state tensor are copied
  into a snapshot before the step, and restored after it with a device-side ``torch.where``
  (OLMo-core's 0/1 step factor, applied to whole tensors). Cost: one extra copy of the
  parameters and optimizer state in memory, and two passes over them per step. State tensors
  kept on the host (a non-capturable Adam's ``step``) are restored with one host read of the
  decision per step; pass ``capturable=True`` or ``fused=True`` to avoid it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from autoclip.errors import UnsupportedError

# Tests set this to False to run the accelerator paths on CPU.
_HOST_BRANCH = True


def _params(opt: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


def _fused(opt: torch.optim.Optimizer) -> bool:
    return bool(opt.param_groups) and all(g.get("fused") for g in opt.param_groups)


class _Guard:
    """What one step's pre hook did, for the post hook to undo."""

    def __init__(self) -> None:
        self.hidden: list[tuple[Tensor, Tensor]] = []  # (param, grad) hidden for a host skip
        self.found_inf: tuple[bool, Any] | None = None  # (had attribute, old value)
        self.snapshot: list[tuple[Tensor, Tensor]] = []  # (live tensor, copy)
        self.skip: Tensor | None = None

    def skip_on_host(self, params: list[Tensor]) -> None:
        for p in params:
            if p.grad is not None:
                self.hidden.append((p, p.grad))
                p.grad = None

    def skip_fused(self, opt: torch.optim.Optimizer, skip: Tensor) -> None:
        had = hasattr(opt, "found_inf")
        old = getattr(opt, "found_inf", None)
        self.found_inf = (had, old)
        flag = skip.to(torch.float32)
        opt.found_inf = flag if old is None else torch.maximum(old, flag.to(old.device))

    def snapshot_all(self, opt: torch.optim.Optimizer, params: list[Tensor], skip: Tensor) -> None:
        live = [p for p in params if p.grad is not None]
        live += [
            v
            for p in live
            for v in opt.state.get(p, {}).values()
            if isinstance(v, Tensor) and v is not p
        ]
        self.snapshot = [(t, t.detach().clone()) for t in live]
        self.skip = skip

    def undo(self, opt: torch.optim.Optimizer) -> None:
        for p, g in self.hidden:
            p.grad = g
        if self.found_inf is not None:
            had, old = self.found_inf
            if had:
                opt.found_inf = old
            else:
                del opt.found_inf
        if self.snapshot:
            skip = self.skip
            host_skip = None
            with torch.no_grad():
                for t, copy in self.snapshot:
                    if t.device == skip.device:
                        t.copy_(torch.where(skip, copy, t))
                    else:  # host-resident state (a step counter): one read of the decision
                        if host_skip is None:
                            host_skip = bool(skip)
                        if host_skip:
                            t.copy_(copy)


def attach(clipper, optimizer: torch.optim.Optimizer) -> RemovableHandle:
    """See :meth:`autoclip.clippers.BaseClipper.attach`."""
    if any(type(p).__name__ == "FlatParameter" for p in _params(optimizer)):
        # FSDP1's flat parameters hold this rank's shard only: a norm of them is per-rank.
        raise UnsupportedError(
            "the optimizer holds FSDP1 (FullyShardedDataParallel) flat parameters, whose "
            "gradients are per-rank shards; use FSDP2 (torch.distributed.fsdp.fully_shard), "
            "or FullyShardedDataParallel.clip_grad_norm_"
        )
    pending: list[_Guard] = []

    def pre_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = _params(opt)
        grad_scale = getattr(opt, "grad_scale", None)  # set by GradScaler for a fused step
        found_inf = getattr(opt, "found_inf", None)
        result = clipper(params, grad_scale=grad_scale, found_inf=found_inf)
        if clipper.unscaled_:  # the clipper unscaled the gradients: the step must not again
            opt.grad_scale = None
        if not clipper.may_skip:
            return
        guard = _Guard()
        skip = result.skipped
        if _HOST_BRANCH and skip.device.type == "cpu":
            if bool(skip):
                guard.skip_on_host(params)
        elif _fused(opt):
            guard.skip_fused(opt, skip)
        else:
            guard.snapshot_all(opt, params, skip)
        pending.append(guard)

    def post_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        while pending:
            pending.pop().undo(opt)

    pre = optimizer.register_step_pre_hook(pre_hook)
    post = optimizer.register_step_post_hook(post_hook)
    return _Handles(pre, post)


class _Handles(RemovableHandle):
    """One removable handle for the pre and post hooks (``handle.remove()`` detaches both)."""

    def __init__(self, pre: RemovableHandle, post: RemovableHandle) -> None:
        self._pre, self._post = pre, post
        self.id = pre.id

    def remove(self) -> None:
        self._pre.remove()
        self._post.remove()

    def __enter__(self) -> _Handles:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
