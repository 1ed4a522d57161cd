"""autoclip inside Lightning: ``Trainer(callbacks=[AutoClipCallback(clipper)])``.

Where it clips. Lightning's precision plugin runs, for each optimizer step: the closure
(forward and backward), then -- with a ``GradScaler`` (``precision="16-mixed"``) --
``scaler.unscale_(optimizer)``, then the ``on_before_optimizer_step`` hooks, then its own
``gradient_clip_val`` clipping, then ``optimizer.step()`` (``plugins/precision/amp.py`` and
``precision.py`` in Lightning 2.6). So ``on_before_optimizer_step`` sees true, unscaled
gradients, once per optimizer step (after the last micro-batch under gradient accumulation),
and this callback clips there. Two exceptions are handled:

* fused optimizers (``torch.optim.AdamW(..., fused=True)``) unscale inside their own step, so
  Lightning leaves their gradients scaled: the callback calls ``scaler.unscale_`` itself (the
  fused step then sees unscaled gradients; ``GradScaler.step`` accounts for that);
* ``Trainer(gradient_clip_val=...)`` would clip a second time: refused with a clear message.
  DeepSpeed clips inside its engine, and FSDP (v1) hands each rank a flat shard whose norm
  is not the global one: both refused; use DeepSpeed's ``gradient_clipping`` or FSDP2
  (``ModelParallelStrategy``) instead.

A step the clipper skips (non-finite gradients, by default): the clipper zeroes its
gradients; on the host the callback also hides them from the optimizer for that step, so the
weights and the optimizer state do not move at all. On an accelerator that decision would cost
a sync every step, so there a skipped step is a zero-gradient step (momentum and weight decay
still act); with a ``GradScaler`` the scaler skips such steps itself.

With ``clipper=None`` the callback runs :func:`autoclip.suggest` at the start of training on
the trainer's own module, optimizer and training batches (moved to the device by the
strategy, the loss from ``training_step`` under the trainer's autocast), restores them, and
clips with the recommended clipper (``proposal_`` keeps the proposal). The clipper's state
goes into every checkpoint (``state_dict`` / ``load_state_dict``); a resumed run clips exactly
as the interrupted one would have, and a run started with ``clipper=None`` resumes with the
clipper its suggestion chose, without suggesting again.

Logging: the metrics of :class:`autoclip.monitor.ClipMonitor` (``autoclip/grad_norm``,
``autoclip/grad_norm_max``, ``autoclip/threshold``, ``autoclip/clipped_frac``,
``autoclip/skipped_frac``) go to ``trainer.loggers`` on the steps where Lightning writes its
own step metrics (every ``log_every_n_steps`` optimizer steps, at the same step number). The
results are summed on the device; the one host sync is when an interval is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from autoclip.clippers import BaseClipper
from autoclip.errors import ConfigError, TaskError
from autoclip.integrations._common import (
    OnDevice,
    check_clipper,
    optimizer_params,
    restore_clipper,
    run_suggest,
    skip_on_host,
)
from autoclip.monitor import ClipMonitor

try:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "autoclip.integrations.lightning needs Lightning: pip install 'autoclip-tuner[lightning]'"
    ) from e

__all__ = ["AutoClipCallback"]


class AutoClipCallback(pl.Callback):
    """Clip every optimizer step with an autoclip clipper, log it, checkpoint its state.

    Args:
        clipper: an autoclip clipper (``autoclip.create_clipper("norm", max_norm=1.0)``,
            ``proposal.clipper()``...), or None to run :func:`autoclip.suggest` first.
        suggest_steps: warm-up steps of that suggestion (100, as ``autoclip.suggest``).
        suggest_kwargs: further keyword arguments for :func:`autoclip.suggest`.
        log_every_n_steps: logging interval in optimizer steps; None: the trainer's own
            ``log_every_n_steps``; 0: no logging (no host sync at all).
        prefix: prepended to the logged metric names.

    Attributes:
        clipper: the clipper in use (set by the suggestion when it was None).
        proposal_: the suggestion's :class:`autoclip.Proposal`, when one ran.
        last_metrics_: the metrics of the last interval written, as floats.
    """

    def __init__(
        self,
        clipper: BaseClipper | None = None,
        *,
        suggest_steps: int = 100,
        suggest_kwargs: dict[str, Any] | None = None,
        log_every_n_steps: int | None = None,
        prefix: str = "autoclip/",
    ) -> None:
        self.clipper = check_clipper(clipper)
        self.suggest_steps = suggest_steps
        self.suggest_kwargs = suggest_kwargs
        self.log_every_n_steps = log_every_n_steps
        self.prefix = prefix
        if log_every_n_steps is not None and not (
            isinstance(log_every_n_steps, int) and log_every_n_steps >= 0
        ):
            raise ConfigError(
                f"`log_every_n_steps` must be an int >= 0 or None, but got {log_every_n_steps!r}"
            )
        self.monitor = ClipMonitor(prefix=prefix)
        self.proposal_ = None
        self.last_metrics_: dict[str, float] | None = None

    # -- checks before anything runs ---------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.gradient_clip_val:
            raise ConfigError(
                f"Trainer(gradient_clip_val={trainer.gradient_clip_val}) would clip the "
                "gradients a second time after AutoClipCallback; remove gradient_clip_val "
                "(the callback clips)"
            )
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            raise ConfigError(
                "DeepSpeed clips inside its engine and shards the gradients, so "
                "AutoClipCallback cannot clip them; remove the callback and set DeepSpeed's "
                "'gradient_clipping' instead"
            )
        if isinstance(trainer.strategy, FSDPStrategy):
            raise ConfigError(
                "under FSDPStrategy (FSDP v1) each rank holds a flat shard of the gradients, "
                "whose norm is not the global one; use ModelParallelStrategy (FSDP2, DTensor "
                "gradients) with AutoClipCallback"
            )
        if (
            type(pl_module).configure_gradient_clipping
            is not pl.LightningModule.configure_gradient_clipping
        ):
            raise ConfigError(
                f"{type(pl_module).__name__} overrides configure_gradient_clipping, which runs "
                "after AutoClipCallback clips; remove the override or the callback"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) > 1:
            raise ConfigError(
                f"AutoClipCallback clips one optimizer's gradients, but the module configures "
                f"{len(trainer.optimizers)}; clip them in training_step with one clipper each"
            )

    # -- the suggestion ----------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.monitor.reset()  # nothing of an earlier fit() call
        # After the checkpoint is restored: a resumed run already has its clipper.
        if self.clipper is not None:
            return
        if trainer.world_size > 1:
            raise ConfigError(
                "AutoClipCallback(clipper=None) suggests on one process only; run "
                "autoclip.suggest once before training and pass proposal.clipper()"
            )
        if not pl_module.automatic_optimization:
            raise ConfigError(
                "AutoClipCallback(clipper=None) needs automatic optimization (training_step "
                "returns the loss); with manual optimization pass a clipper"
            )
        loader = trainer.train_dataloader
        if loader is None:
            raise TaskError("AutoClipCallback(clipper=None) found no training dataloader")
        batches = OnDevice(loader, trainer.strategy.batch_to_device)

        def loss_fn(module: pl.LightningModule, batch: Any) -> torch.Tensor:
            with trainer.precision_plugin.forward_context():
                out = module.training_step(batch, 0)
            loss = out.get("loss") if isinstance(out, Mapping) else out
            if not isinstance(loss, torch.Tensor):
                raise TaskError(
                    f"{type(module).__name__}.training_step must return the loss (a tensor or "
                    "a dict with 'loss') for AutoClipCallback(clipper=None)"
                )
            return loss

        kwargs = dict(self.suggest_kwargs or {})
        kwargs.setdefault("scaler", getattr(trainer.precision_plugin, "scaler", None))
        with _quiet(pl_module):
            self.proposal_ = run_suggest(
                pl_module, trainer.optimizers[0], loss_fn, batches, self.suggest_steps, kwargs
            )
        self.clipper = self.proposal_.clipper()

    # -- the step ----------------------------------------------------------------------------
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.clipper is None:  # fit() without on_train_start cannot happen; be explicit
            raise ConfigError("AutoClipCallback has no clipper; pass one, or None before fit()")
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and optimizer.defaults.get("fused"):
            # Lightning leaves a fused optimizer's gradients scaled (it unscales them in its
            # step); unscale them here so the clipper measures and clips the true gradients.
            scaler.unscale_(optimizer)
        params = optimizer_params(optimizer)
        result = self.clipper(params)
        skip_on_host(result, params)
        self.monitor.update(result)
        every = (
            trainer.log_every_n_steps if self.log_every_n_steps is None else self.log_every_n_steps
        )
        # The k-th optimizer step runs while global_step == k - 1; Lightning writes its step
        # metrics after step k when k % log_every_n_steps == 0, at step number k - 1.
        if every and (trainer.global_step + 1) % every == 0:
            metrics = self.monitor.compute()  # the interval's one host sync
            self.monitor.reset()
            self.last_metrics_ = metrics
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {} if self.clipper is None else {"clipper": self.clipper.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "clipper" in state_dict:
            self.clipper = restore_clipper(self.clipper, state_dict["clipper"])


@contextlib.contextmanager
def _quiet(module: pl.LightningModule) -> Iterator[None]:
    """Silence ``self.log`` in ``training_step`` while the suggestion calls it outside the
    loop (its values would land among the real run's metrics)."""
    saved = {k: module.__dict__[k] for k in ("log", "log_dict") if k in module.__dict__}
    module.log = lambda *a, **k: None
    module.log_dict = lambda *a, **k: None
    try:
        yield
    finally:
        for k in ("log", "log_dict"):
            module.__dict__.pop(k, None)
        module.__dict__.update(saved)
