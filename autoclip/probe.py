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

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from autoclip._inputs import _params_of
from autoclip._snapshot import _get_rng, _set_rng, _Snapshot
from autoclip._trace import SAFETY_CLIP, GradTrace
from autoclip._warmup import _warm_up
from autoclip.errors import ConfigError, TaskError
from autoclip.task import check_loss_fn, check_owns

__all__ = ["GradTrace", "probe", "probe_task"]

# Gradient elements (and AGC unit ratios) kept at each sampled step: a few thousand from the
# settled sampled steps give a stable 99th percentile, and a trace's JSON stays small.
SAMPLE_SIZE = 1024
# Sampled steps spread over the warm-up.
SAMPLES = 10
# When the warm-up has diverged: the training loop's one rule (autoclip/divergence.py).
# Host copies every 25 steps on an accelerator; free on the host, where it is every step.
SYNC_EVERY = 25


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
