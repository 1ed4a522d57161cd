"""autoclip inside the Hugging Face ``Trainer``: ``AutoClipCallback(clipper).add_to(trainer)``.

Which hook, and why. In transformers 5.24 the Trainer's step (``Trainer._run_epoch``) runs,
once per optimizer step after the last accumulated micro-batch: its own clipping when
``max_grad_norm > 0`` (``accelerator.clip_grad_norm_``), else the same call with an infinite
threshold to measure ``grad_norm`` for the log; then ``on_pre_optimizer_step``; then
``optimizer.step()``. ``accelerator.clip_grad_norm_`` unscales fp16 gradients first (for
fused optimizers too), so ``on_pre_optimizer_step`` is the one hook that sees the final,
unscaled gradients right before the update: the callback clips there, and needs
``TrainingArguments(max_grad_norm=0)`` (whose default, 1.0, would clip first: refused with a
clear message). The Trainer's own ``grad_norm`` log is then the pre-clip norm. DeepSpeed
clips inside its engine and FSDP (v1) hands each rank a flat shard: both refused (use
DeepSpeed's ``gradient_clipping``, or FSDP2).

A step the clipper skips is handled as in :mod:`autoclip.integrations.lightning`: a true
skip on the host, a zero-gradient step on an accelerator (where fp16's GradScaler skips
non-finite steps itself).

With ``clipper=None`` it runs :func:`autoclip.suggest` at ``on_train_begin`` on the Trainer's
own model, optimizer and training dataloader (the loss from ``trainer.compute_loss`` when the
callback was added with :meth:`AutoClipCallback.add_to`, else from the model's own ``loss``
output), restores them, and clips with the recommended clipper (``proposal_``).

State. On every checkpoint (``on_save``) the clipper's ``state_dict()`` is written to
``autoclip_clipper.pt`` inside ``output_dir/checkpoint-<step>``; when a run resumes from that
checkpoint (``on_train_begin`` with ``global_step > 0``) it is read back, so the clipper goes on
exactly as it would have. (``ExportableState`` would keep it in ``trainer_state.json`` instead,
but the Trainer restores such callbacks only with ``restore_callback_states_from_checkpoint``
and by building a new instance, which a caller's reference would no longer see.)

Logging. :class:`autoclip.monitor.ClipMonitor` sums the results on the device; on each
training log (``on_log``) its interval is turned into numbers, one host sync, and added to
``logs`` (and to ``state.log_history``): ``autoclip/grad_norm``, ``autoclip/grad_norm_max``,
``autoclip/threshold``, ``autoclip/clipped_frac``, ``autoclip/skipped_frac``. Reporting
callbacks (TensorBoard, W&B...) run in the Trainer's callback order and see the added keys
only if they come after this callback, which is why :meth:`~AutoClipCallback.add_to` puts it
first (``Trainer(callbacks=[...])`` appends it after the ``report_to`` reporters).
"""

from __future__ import annotations

import os
import warnings
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
    import transformers
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "autoclip.integrations.transformers needs transformers: "
        "pip install 'autoclip-tuner[transformers]'"
    ) from e

__all__ = ["STATE_FILE", "AutoClipCallback"]

#: The clipper's state inside each checkpoint folder.
STATE_FILE = "autoclip_clipper.pt"


class AutoClipCallback(TrainerCallback):
    """Clip every optimizer step of a ``transformers.Trainer``, log it, checkpoint its state.

    Args:
        clipper: an autoclip clipper, or None to run :func:`autoclip.suggest` first.
        suggest_steps: warm-up steps of that suggestion.
        suggest_kwargs: further keyword arguments for :func:`autoclip.suggest`.
        prefix: prepended to the logged metric names.

    Attributes:
        clipper: the clipper in use (set by the suggestion when it was None).
        proposal_: the suggestion's :class:`autoclip.Proposal`, when one ran.
        resumed_from_: the state file read at a resume, if any.
    """

    def __init__(
        self,
        clipper: BaseClipper | None = None,
        *,
        suggest_steps: int = 100,
        suggest_kwargs: dict[str, Any] | None = None,
        prefix: str = "autoclip/",
    ) -> None:
        self.clipper = check_clipper(clipper)
        self.suggest_steps = suggest_steps
        self.suggest_kwargs = suggest_kwargs
        self.prefix = prefix
        self.monitor = ClipMonitor(prefix=prefix)
        self.proposal_ = None
        self.resumed_from_: str | None = None
        self._trainer: Any = None

    def add_to(self, trainer: Any) -> AutoClipCallback:
        """Put this callback first in ``trainer``'s callbacks (so reporters see its metrics,
        and the suggestion uses ``trainer.compute_loss``); returns ``self``."""
        if self in trainer.callback_handler.callbacks:
            trainer.callback_handler.remove_callback(self)
        trainer.callback_handler.callbacks.insert(0, self)
        self._trainer = trainer
        return self

    # -- before training ---------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        _check_args(args)
        self.monitor.reset()  # nothing of an earlier train() call (another search trial)
        if state.global_step > 0:
            self._resume(args, state)
        if self.clipper is None:
            self._suggest(args, model, optimizer, kwargs.get("train_dataloader"))

    def _resume(self, args, state) -> None:
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        candidates = [folder]
        if isinstance(args.resume_from_checkpoint, str):
            candidates.insert(0, args.resume_from_checkpoint)
        for path in (os.path.join(c, STATE_FILE) for c in candidates):
            if os.path.isfile(path):
                self.clipper = restore_clipper(self.clipper, torch.load(path, weights_only=True))
                self.resumed_from_ = path
                return
        warnings.warn(
            f"resuming at step {state.global_step}, but no {STATE_FILE} in {candidates}: "
            "the clipper starts from its initial state",
            stacklevel=2,
        )

    def _suggest(self, args, model, optimizer, loader) -> None:
        if args.world_size > 1:
            raise ConfigError(
                "AutoClipCallback(clipper=None) suggests on one process only; run "
                "autoclip.suggest once before training and pass proposal.clipper()"
            )
        if model is None or optimizer is None or loader is None:
            raise TaskError("AutoClipCallback(clipper=None) got no model, optimizer or data")
        # accelerate's AcceleratedOptimizer subclasses Optimizer and wraps the real one.
        while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
            optimizer = optimizer.optimizer
        trainer = self._trainer

        def loss_fn(m: torch.nn.Module, batch: Any) -> torch.Tensor:
            if trainer is not None:
                with trainer.compute_loss_context_manager():
                    return trainer.compute_loss(m, batch)
            out = m(**batch)
            loss = out.get("loss") if hasattr(out, "get") else None
            if loss is None:
                raise TaskError(
                    "the model returned no loss for AutoClipCallback(clipper=None); give the "
                    "batches labels, or use AutoClipCallback(None).add_to(trainer)"
                )
            return loss

        kwargs = dict(self.suggest_kwargs or {})
        if trainer is not None:
            kwargs.setdefault("scaler", getattr(trainer.accelerator, "scaler", None))
        batches = OnDevice(loader, lambda b: b)  # the Trainer's loader is already on-device
        self.proposal_ = run_suggest(model, optimizer, loss_fn, batches, self.suggest_steps, kwargs)
        self.clipper = self.proposal_.clipper()

    # -- the step ----------------------------------------------------------------------------
    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.clipper is None:
            raise ConfigError("AutoClipCallback has no clipper; pass one, or None before train()")
        params = optimizer_params(optimizer)
        result = self.clipper(params)
        skip_on_host(result, params)
        self.monitor.update(result)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Training logs carry "loss"; evaluation logs and the final summary do not.
        if logs is None or "loss" not in logs or not self.monitor.count_:
            return
        metrics = self.monitor.compute()  # the interval's one host sync
        self.monitor.reset()
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)

    # -- checkpoints -------------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        if self.clipper is None or not args.should_save:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):  # e.g. hyperparameter_search's run-N/ folders
            warnings.warn(
                f"no checkpoint folder {folder}: the clipper's state was not saved with it",
                stacklevel=2,
            )
            return
        torch.save(self.clipper.state_dict(), os.path.join(folder, STATE_FILE))


def _check_args(args: Any) -> None:
    if args.fp16 and _version(transformers.__version__) < (5, 24):
        warnings.warn(
            "AutoClipCallback relies on the Trainer unscaling fp16 gradients before "
            "on_pre_optimizer_step even with max_grad_norm=0, as transformers 5.24 does; "
            f"{transformers.__version__} is older and may hand it scaled gradients",
            stacklevel=3,
        )
    if args.max_grad_norm and args.max_grad_norm > 0:
        raise ConfigError(
            f"TrainingArguments(max_grad_norm={args.max_grad_norm}) makes the Trainer clip "
            "the gradients before AutoClipCallback does (1.0 is its default); set "
            "max_grad_norm=0"
        )
    if args.deepspeed:
        raise ConfigError(
            "DeepSpeed clips inside its engine and shards the gradients, so AutoClipCallback "
            "cannot clip them; remove the callback and set DeepSpeed's 'gradient_clipping'"
        )
    # transformers 5 defaults to FSDP2 (fsdp_config["version"] = 2).
    if args.fsdp and int((args.fsdp_config or {}).get("version", 2)) != 2:
        raise ConfigError(
            "under FSDP v1 each rank holds a flat shard of the gradients, whose norm is not "
            "the global one; use FSDP2 (fsdp_config={'version': 2}) with AutoClipCallback"
        )


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())
