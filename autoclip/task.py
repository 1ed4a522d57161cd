"""Task: everything a trial needs to train a model from scratch, reproducibly.

A Task is the unit autoclip tunes. ``load_task`` turns a command-line TARGET into one:
``path/to/file.py:name``, ``package.module:name``, or the name of a bundled study. ``name``
may be a Task or a function returning one. A file target can import the modules beside it
(its folder is on ``sys.path`` while it loads). Bundled studies are found through the
``autoclip.studies`` entry-point group, so the library never imports the studies itself and
any installed package can add its own::

    [project.entry-points."autoclip.studies"]
    my_model = "my_package.tasks:make_task"
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoclip.errors import TaskError

__all__ = ["Task", "load_task", "move_to", "seed_everything"]

AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Task:
    """What to train, and how, for one trial.

    Attributes:
        model_fn: ``() -> nn.Module``; called after seeding, so initial weights are fixed.
        optimizer_fn: ``(parameters) -> Optimizer`` for the model's parameters.
        loss_fn: ``(model, batch) -> 0-dim tensor``, the training loss of one batch.
        batches: a *re-iterable* source of batches (a list, a DataLoader...); training cycles
            through it as many times as the step budget needs.
        eval_fn: optional ``(model) -> float``, the held-out loss (lower is better) that the
            search reports as the final loss when present.
        seed: seeds model initialisation and anything random in the data order.
        steps: default number of optimizer steps in one trial.
        name, description: shown in reports and ``autoclip studies``.
        target_loss: optional loss level used for "steps to target" (convergence speed).
        default_clipper: optional clipper config conventional for this kind of model (e.g.
            ``{"name": "norm", "max_norm": 0.25}`` for word-level LSTMs), a baseline arm.
        device: where the model is built and every batch is moved (``"cpu"``, ``"cuda"``...).
        autocast_dtype: ``torch.bfloat16`` or ``torch.float16`` to run the loss under
            ``torch.autocast`` as the user trains; None (default) for full precision.
        grad_scaler: train with ``torch.amp.GradScaler`` (float16 training); the clipper
            always sees unscaled gradients.
        accumulation_steps: micro-batches whose gradients are summed (each loss divided by
            this) before one optimizer step; the clipper runs once per optimizer step.

    >>> import torch
    >>> from torch import nn
    >>> x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    >>> task = Task(
    ...     model_fn=lambda: nn.Linear(4, 1),                      # a factory, not a model
    ...     optimizer_fn=lambda params: torch.optim.SGD(params, lr=0.1),
    ...     loss_fn=lambda model, batch: model(batch).pow(2).mean(),  # (model, batch) -> 0-dim
    ...     batches=[x[:16], x[16:]],                              # re-iterable
    ...     steps=20,
    ... )
    >>> model, optimizer = task.build()
    >>> task.compute_loss(model, x[:16]).shape
    torch.Size([])
    """

    model_fn: Callable[[], nn.Module]
    optimizer_fn: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    batches: Iterable[Any]
    eval_fn: Callable[[nn.Module], float] | None = None
    seed: int = 0
    steps: int = 200
    name: str = "task"
    description: str = ""
    target_loss: float | None = None
    default_clipper: dict[str, Any] | None = field(default=None)
    device: str | torch.device = "cpu"
    autocast_dtype: torch.dtype | None = None
    grad_scaler: bool = False
    accumulation_steps: int = 1

    def __post_init__(self) -> None:
        _check_factories(self)
        for attr in ("model_fn", "optimizer_fn", "loss_fn"):
            if not callable(getattr(self, attr)):
                raise TaskError(
                    f"Task.{attr} must be callable, but got {type(getattr(self, attr)).__name__}"
                )
        if self.eval_fn is not None and not callable(self.eval_fn):
            raise TaskError(f"Task.eval_fn must be callable or None, but got {self.eval_fn!r}")
        if isinstance(self.batches, Iterator):
            raise TaskError(
                "Task.batches is a one-shot iterator, so a second trial would see no data; "
                "pass a list, a tuple or a DataLoader instead"
            )
        if not isinstance(self.batches, Iterable):
            raise TaskError(
                f"Task.batches must be re-iterable (a list or a DataLoader), "
                f"but got {type(self.batches).__name__}"
            )
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise TaskError(f"Task.steps must be an int >= 1, but got {self.steps!r}")
        if not isinstance(self.seed, int):
            raise TaskError(f"Task.seed must be an int, but got {self.seed!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise TaskError(
                f"Task.device must name a torch device ('cpu', 'cuda', 'cuda:1', 'mps'...), "
                f"but got {self.device!r}"
            ) from None
        if self.autocast_dtype is not None and self.autocast_dtype not in AUTOCAST_DTYPES:
            raise TaskError(
                f"Task.autocast_dtype must be None, torch.bfloat16 or torch.float16, but got "
                f"{self.autocast_dtype!r}"
            )
        if not isinstance(self.grad_scaler, bool):
            raise TaskError(f"Task.grad_scaler must be True or False, but got {self.grad_scaler!r}")
        if not (isinstance(self.accumulation_steps, int) and self.accumulation_steps >= 1):
            raise TaskError(
                f"Task.accumulation_steps must be an int >= 1, but got {self.accumulation_steps!r}"
            )

    def build(self, seed: int | None = None) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Seed everything, then build a fresh model and its optimizer."""
        seed_everything(self.seed if seed is None else seed)
        model = self.model_fn()
        if not isinstance(model, nn.Module):
            raise TaskError(
                f"Task.model_fn must return an nn.Module, but returned {type(model).__name__}"
            )
        model = model.to(self.device)  # before the optimizer, which keeps references
        if not any(p.requires_grad for p in model.parameters()):
            raise TaskError("the model has no trainable parameters (requires_grad=True)")
        optimizer = self.optimizer_fn(model.parameters())
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TaskError(
                "Task.optimizer_fn must return a torch.optim.Optimizer, "
                f"but returned {type(optimizer).__name__}"
            )
        check_owns(
            model,
            optimizer,
            "build it in Task.optimizer_fn over the parameters it is given: "
            "optimizer_fn=lambda params: torch.optim.SGD(params, lr=...)",
        )
        return model, optimizer

    def batch_stream(self) -> Iterator[Any]:
        """Cycle through ``batches`` forever (re-iterating, so a shuffling loader reshuffles)."""
        first = iter(self.batches)
        try:
            head = next(first)
        except StopIteration:
            raise TaskError("Task.batches is empty: give at least one batch") from None
        yield head
        yield from first
        while True:
            yield from self.batches

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` on the task's device with ``autocast_dtype``, or a no-op."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=self.autocast_dtype)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        """A fresh ``GradScaler`` on the task's device when ``grad_scaler``, else None."""
        if not self.grad_scaler:
            return None
        return torch.amp.GradScaler(torch.device(self.device).type)

    def compute_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """``loss_fn(model, batch)`` with the batch on the task's device, under the task's
        autocast, checked to be a 0-dim floating tensor with a graph."""
        with self.autocast():
            loss = self.loss_fn(model, move_to(batch, self.device))
        if not isinstance(loss, torch.Tensor):
            raise TaskError(
                f"Task.loss_fn must return a tensor, but returned {type(loss).__name__}"
            )
        if loss.numel() != 1:
            raise TaskError(
                f"Task.loss_fn must return a scalar, but returned shape {tuple(loss.shape)}; "
                "reduce it with .mean() or .sum()"
            )
        if not loss.requires_grad:
            raise TaskError(
                "Task.loss_fn returned a loss that does not require grad; compute it from "
                "the model's output without torch.no_grad() or .detach()"
            )
        return loss.reshape(())


def _check_factories(task: Task) -> None:
    """The two mistakes that otherwise surface steps later as a raw TypeError."""
    if isinstance(task.model_fn, nn.Module):
        raise TaskError(
            f"Task.model_fn must build a fresh model, but got a {type(task.model_fn).__name__} "
            "instance; pass a factory such as model_fn=lambda: MyModel()"
        )
    check_loss_fn(task.loss_fn, "Task.loss_fn")


def check_loss_fn(loss_fn: Any, where: str = "loss_fn") -> None:
    """A criterion (``nn.MSELoss()``) where ``(model, batch) -> loss`` belongs: one clear line
    instead of a TypeError steps later."""
    if isinstance(loss_fn, nn.Module):
        raise TaskError(
            f"{where} receives (model, batch) and returns the loss, but got the criterion "
            f"{type(loss_fn).__name__}; wrap it: loss_fn=lambda model, batch: "
            "criterion(model(batch[0]), batch[1])"
        )


def check_owns(model: nn.Module, optimizer: torch.optim.Optimizer, fix: str = "") -> None:
    """The optimizer must update the model it was built for."""
    own = {id(p) for p in model.parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(id(p) in own for p in params):
        raise TaskError(
            "the optimizer updates none of the model's parameters; "
            + (fix or "build it over this model: torch.optim.SGD(model.parameters(), lr=...)")
        )


def move_to(batch: Any, device: str | torch.device) -> Any:
    """``batch`` with every tensor in it (in tuples, lists, dicts, nested) moved to ``device``.

    Tensors already there are returned as they are (no copy)."""
    if isinstance(batch, torch.Tensor):
        # non_blocking only towards an accelerator: a non-blocking copy to the host may be
        # read before it has landed.
        return batch.to(device, non_blocking=torch.device(device).type != "cpu")
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a NamedTuple
        return type(batch)(*(move_to(b, device) for b in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to(v, device) for k, v in batch.items()})
    return batch


def _resolve(obj: Any, target: str) -> Task:
    if callable(obj) and not isinstance(obj, Task):
        try:
            obj = obj()
        except TaskError:
            raise
        except Exception as exc:
            raise TaskError(f"calling {target!r} to build the Task failed: {exc}") from exc
    if not isinstance(obj, Task):
        raise TaskError(
            f"{target!r} is a {type(obj).__name__}, not an autoclip.Task or a function "
            "returning one"
        )
    return obj


STUDY_GROUP = "autoclip.studies"


def _study_entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=STUDY_GROUP)}


def bundled_studies() -> dict[str, str]:
    """Names of the installed study tasks (entry points ``autoclip.studies``) and their
    one-line descriptions (the first line of the defining module's docstring)."""
    out = {}
    for name, ep in sorted(_study_entry_points().items()):
        module = sys.modules.get(ep.module) or importlib.import_module(ep.module)
        doc = (module.__doc__ or "").strip().splitlines()
        out[name] = doc[0] if doc else ""
    return out


def load_task(target: str | Task) -> Task:
    """Resolve ``file.py:name``, ``package.module:name`` or a bundled study name to a Task.

    >>> load_task("relu_rnn").name            # a bundled study (entry point)
    'relu_rnn'
    >>> load_task("examples/nowhere.py:make_task")
    Traceback (most recent call last):
    autoclip.errors.TaskError: 'examples/nowhere.py:make_task': no such file 'examples/nowhere.py'
    """
    if isinstance(target, Task):
        return target
    if not isinstance(target, str) or not target.strip():
        raise TaskError(f"a task target must be a non-empty string, but got {target!r}")
    if ":" not in target:
        studies = _study_entry_points()
        if target not in studies:
            raise TaskError(
                f"no bundled study named {target!r}; use one of {sorted(studies)} or give "
                "path/to/file.py:name or package.module:name"
            )
        return _resolve(studies[target].load(), target)
    where, _, attr = target.rpartition(":")
    if not attr.isidentifier():
        raise TaskError(f"{target!r}: {attr!r} after the colon is not a Python name")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise TaskError(f"{target!r}: no such file {str(path)!r}")
        mod_name = f"_autoclip_target_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        # the file's own folder, so that it can import the modules beside it
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)
        try:
            spec.loader.exec_module(module)
            return _resolve(_attr(module, where, attr, target), target)
        except ImportError as exc:
            raise TaskError(
                f"importing {str(path)!r} failed: {type(exc).__name__}: {exc} (its folder "
                f"{folder} was on sys.path; install a module from elsewhere or add its folder "
                "to PYTHONPATH)"
            ) from exc
        except TaskError:
            raise
        except Exception as exc:
            raise TaskError(f"importing {str(path)!r} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            sys.path.remove(folder)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise TaskError(f"{target!r}: cannot import module {where!r} ({exc})") from exc
    return _resolve(_attr(module, where, attr, target), target)


def _attr(module: Any, where: str, attr: str, target: str) -> Any:
    if not hasattr(module, attr):
        raise TaskError(f"{target!r}: module {where!r} has no attribute {attr!r}")
    return getattr(module, attr)
