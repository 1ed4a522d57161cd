"""Clipping metrics for a log, at one host sync per logging interval.

A clipper returns a :class:`~autoclip.clippers.ClipResult` of tensors every step, on the
gradients' device. Reading one with ``.item()`` each step would make every step wait for the
accelerator, so :class:`ClipMonitor` adds the results up *on the device* and turns them into
numbers only when an interval ends: one ``.tolist()`` of one stacked tensor, the interval's
only host sync.

What an interval reports (names after ``prefix``, ``"autoclip/"`` by default):

* ``grad_norm``: mean pre-clip global norm over the interval's finite steps (NaN if none);
* ``grad_norm_max``: the largest of them;
* ``threshold``: the threshold of the interval's last step (for ``value`` / ``agc`` clippers
  the clip value or ratio, as in ``ClipResult.threshold``);
* ``clipped_frac``: fraction of the interval's steps that were clipped;
* ``skipped_frac``: fraction of skipped steps (non-finite gradients; spikes, for clippers
  that skip them).

Plain PyTorch::

    monitor = ClipMonitor(every=50, sink=SummaryWriter("runs/x"))   # or any callable
    for step, batch in enumerate(batches):
        loss_fn(model, batch).backward()
        monitor.update(clipper(model.parameters()), step)   # logs every 50th call
        optimizer.step(); optimizer.zero_grad()

The Lightning and Hugging Face callbacks (:mod:`autoclip.integrations`) use the same class.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from autoclip.clippers import ClipResult
from autoclip.errors import ConfigError

__all__ = ["METRICS", "ClipMonitor"]

#: The metric names an interval reports, before the prefix.
METRICS = ("grad_norm", "grad_norm_max", "threshold", "clipped_frac", "skipped_frac")


class ClipMonitor:
    """Accumulate :class:`ClipResult` tensors on the device; report once per interval.

    Args:
        every: interval length in ``update`` calls; ``update`` reports (and writes to ``sink``)
            on every ``every``-th call. ``None``: never by itself, call :meth:`compute`.
        sink: where a report goes: an object with ``add_scalar(tag, value, step)`` (e.g.
            ``torch.utils.tensorboard.SummaryWriter``), or a callable ``(metrics, step)``.
        prefix: prepended to every metric name.

    >>> import torch
    >>> from autoclip import NormClip
    >>> p, clip, monitor = torch.nn.Parameter(torch.zeros(2)), NormClip(1.0), ClipMonitor(every=2)
    >>> p.grad = torch.tensor([3.0, 4.0])
    >>> monitor.update(clip([p])) is None  # mid-interval: nothing leaves the device
    True
    >>> p.grad = torch.tensor([0.3, 0.4])
    >>> metrics = monitor.update(clip([p]))  # the interval's end: one sync
    >>> metrics["autoclip/grad_norm_max"], metrics["autoclip/clipped_frac"]
    (5.0, 0.5)
    """

    def __init__(
        self,
        every: int | None = None,
        sink: Any = None,
        prefix: str = "autoclip/",
    ) -> None:
        self.every = every
        self.sink = sink
        self.prefix = prefix
        if every is not None and not (isinstance(every, int) and every >= 1):
            raise ConfigError(f"`every` must be an int >= 1 or None, but got {every!r}")
        if sink is not None and not (hasattr(sink, "add_scalar") or callable(sink)):
            raise ConfigError(
                "`sink` must have add_scalar(tag, value, step) (a SummaryWriter) or be a "
                f"callable (metrics, step), but got {type(sink).__name__}"
            )
        self.calls_ = 0
        self.reset()

    def reset(self) -> None:
        """Start a new interval."""
        # [sum of finite norms, max of them, finite, clipped, skipped, last threshold]
        self._acc: Tensor | None = None
        self.count_ = 0

    @torch.no_grad()
    def update(self, result: ClipResult, step: int | None = None) -> dict[str, float] | None:
        """Add one step's result (device ops only, no sync).

        Returns the interval's metrics when this call ends an interval (and writes them to
        ``sink`` at ``step``, or at the call count when ``step`` is None), else None.
        """
        norm = result.total_norm.detach().float()
        finite = result.finite
        # Clippers that can also skip finite steps (spikes) say so in `skipped`.
        skipped = getattr(result, "skipped", None)
        skipped = ~finite if skipped is None else skipped
        kept = torch.where(finite, norm, torch.zeros_like(norm))
        threshold = result.threshold.detach().float().to(norm.device).reshape(())
        row = torch.stack(
            [kept, kept, finite.float(), result.clipped.float(), skipped.float(), threshold]
        )  # [6]
        if self._acc is None:
            self._acc = row
        else:
            acc = self._acc + row
            acc[1] = torch.maximum(self._acc[1], row[1])
            acc[5] = row[5]
            self._acc = acc
        self.count_ += 1
        self.calls_ += 1
        if self.every is None or self.calls_ % self.every:
            return None
        metrics = self.compute()
        self.write(metrics, self.calls_ if step is None else step)
        self.reset()
        return metrics

    def compute(self) -> dict[str, float]:
        """The current interval's metrics as floats: the interval's one host sync."""
        names = [self.prefix + m for m in METRICS]
        if self._acc is None:
            return dict.fromkeys(names, math.nan)
        total, top, finite, clipped, skipped, threshold = self._acc.tolist()
        n = self.count_
        values = (
            total / finite if finite else math.nan,
            top if finite else math.nan,
            threshold,
            clipped / n,
            skipped / n,
        )
        return dict(zip(names, values, strict=True))

    def write(self, metrics: dict[str, float], step: int) -> None:
        """Send ``metrics`` to ``sink`` (if any)."""
        if self.sink is None:
            return
        if hasattr(self.sink, "add_scalar"):
            for tag, value in metrics.items():
                self.sink.add_scalar(tag, value, step)
        else:
            sink: Callable[[dict[str, float], int], Any] = self.sink
            sink(metrics, step)
