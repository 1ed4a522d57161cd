"""A study's fingerprint: what it was created for, so a rerun resumes only the same search.

A stored study is resumed by name. Without more, an edited task (another learning rate,
another model under the same task name) would be resumed as if nothing changed, and its
trials mixed with the old ones. The fingerprint names the parts of a task a trial depends
on, each with a short hash and a readable summary:

* ``model``: the model's class and every parameter's name, shape and dtype;
* ``optimizer``: its class and hyperparameters (``lr``, ``momentum``...), as built;
* ``data``: the number of batches (when known) and the first batch's structure (shapes and
  dtypes of its tensors), plus a hash of its values;
* ``code``: the source of the loss, model, optimizer and evaluation functions, and of the
  file(s) that define them (the task file), so an edit anywhere in it is seen;
* ``seed``, ``steps``, ``eval``: the task's seed, default step count and whether it has an
  evaluation function.

Computing it builds the model and optimizer once on the CPU the way a trial does, and leaves
every random state as it found it. Hashes are of content, not of paths, so the same task on
another machine (another checkout folder) has the same fingerprint.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import random
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from autoclip.task import Task

__all__ = ["describe_changes", "fingerprint"]

_HASH = 12  # hex digits kept: collisions do not matter at this scale, width does


def _digest(obj: Any) -> str:
    text = obj if isinstance(obj, (bytes, bytearray)) else json.dumps(obj, sort_keys=True)
    if isinstance(text, str):
        text = text.encode()
    return hashlib.sha256(text).hexdigest()[:_HASH]


def _structure(obj: Any, values: Any) -> Any:
    """Shapes and dtypes of the tensors in ``obj`` (nested lists/tuples/dicts); values hashed."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        values.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
        return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"
    if isinstance(obj, np.ndarray):
        values.update(np.ascontiguousarray(obj).tobytes())
        return f"{obj.dtype}{list(obj.shape)}"
    if isinstance(obj, Mapping):
        return {str(k): _structure(v, values) for k, v in sorted(obj.items(), key=str)}
    if isinstance(obj, (list, tuple)):
        return [_structure(v, values) for v in obj]
    values.update(repr(obj).encode())
    return type(obj).__name__


def _source(fn: Callable | None) -> tuple[str, str | None]:
    """(the function's own source or name, the source of the file defining it)."""
    if fn is None:
        return "", None
    fn = inspect.unwrap(getattr(fn, "func", fn))  # functools.partial, decorators
    try:
        own = inspect.getsource(fn)
    except (OSError, TypeError):
        own = getattr(fn, "__qualname__", type(fn).__name__)
    try:
        path = inspect.getsourcefile(fn)
        with open(path, "rb") as f:
            whole = f.read().decode("utf-8", "replace")
    except (OSError, TypeError):
        whole = None
    return own, whole


def _hyper(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_hyper(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return type(value).__name__


def fingerprint(task: Task) -> dict[str, dict[str, str]]:
    """``{part: {"hash": ..., "summary": ...}}`` for the parts listed in the module docstring."""
    states = (random.getstate(), np.random.get_state())
    with torch.random.fork_rng():  # every device's generator restored afterwards
        try:
            model, optimizer = task.build()
            params = [
                f"{n}:{str(p.dtype).removeprefix('torch.')}{list(p.shape)}"
                for n, p in model.named_parameters()
            ]
            hyper = [
                {k: _hyper(v) for k, v in sorted(g.items()) if k != "params"}
                for g in optimizer.param_groups
            ]
            values = hashlib.sha256()
            first = _structure(next(iter(task.batches)), values)
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
    try:
        n_batches: int | None = len(task.batches)  # type: ignore[arg-type]
    except TypeError:
        n_batches = None  # a DataLoader over an iterable dataset

    files, own = {}, []
    for name in ("loss_fn", "model_fn", "optimizer_fn", "eval_fn"):
        src, whole = _source(getattr(task, name))
        own.append(src)
        if whole is not None:
            files[_digest(whole)] = whole
    n_params = sum(p.numel() for p in model.parameters())
    group = hyper[0] if hyper else {}
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in group.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    parts = {
        "model": (params, f"{type(model).__name__} with {n_params} parameters"),
        "optimizer": (
            [type(optimizer).__name__, hyper],
            f"{type(optimizer).__name__}({shown})",
        ),
        "data": (
            [n_batches, first, values.hexdigest()],
            f"{n_batches if n_batches is not None else '?'} batches of {json.dumps(first)}",
        ),
        "code": ([own, sorted(files)], "the task's source"),
        "seed": (task.seed, str(task.seed)),
        "steps": (task.steps, str(task.steps)),
        "eval": (task.eval_fn is not None, "eval_fn" if task.eval_fn is not None else "none"),
    }
    return {k: {"hash": _digest(v), "summary": s[:160]} for k, (v, s) in parts.items()}


def _difference(a: str, b: str) -> str:
    """``a -> b``, or only the ``key=value`` items that differ when both are ``Name(k=v, ...)``."""
    pa, pb = re.fullmatch(r"(\w+)\((.*)\)", a or ""), re.fullmatch(r"(\w+)\((.*)\)", b or "")
    if pa and pb and pa.group(1) == pb.group(1):
        ia, ib = pa.group(2).split(", "), pb.group(2).split(", ")
        gone, new = [x for x in ia if x not in ib], [x for x in ib if x not in ia]
        if gone or new:
            return f"{pa.group(1)} {', '.join(gone) or '-'} -> {', '.join(new) or '-'}"
    return f"{a} -> {b}"


def describe_changes(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, one phrase a part (empty when they match)."""
    out = []
    for part, mine in now.items():
        old = stored.get(part)
        if old is None:
            continue  # a part an older autoclip did not record
        if old.get("hash") == mine.get("hash"):
            continue
        a, b = old.get("summary"), mine.get("summary")
        if a != b:
            out.append(f"{part}: {_difference(a, b)}")
        else:
            out.append(f"{part}: edited" if part == "code" else f"{part}: changed")
    return out
