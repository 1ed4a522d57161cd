from dataclasses import replace
from typing import NamedTuple

import pytest
import torch
from _tasks import make_task
from torch import nn

import autoclip
from autoclip.task import Task, load_task


def test_build_is_reproducible_from_the_seed():
    task = make_task()
    m1, _ = task.build()
    m2, _ = task.build()
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    m3, _ = task.build(seed=1)
    assert not torch.equal(next(m1.parameters()), next(m3.parameters()))


def test_one_shot_iterator_is_rejected():
    with pytest.raises(autoclip.TaskError, match="one-shot iterator"):
        Task(
            model_fn=lambda: nn.Linear(2, 1),
            optimizer_fn=lambda p: torch.optim.SGD(p, lr=0.1),
            loss_fn=lambda m, b: m(b).sum(),
            batches=iter([torch.ones(1, 2)]),
        )


def test_empty_batches_error_names_the_fix():
    task = Task(
        model_fn=lambda: nn.Linear(2, 1),
        optimizer_fn=lambda p: torch.optim.SGD(p, lr=0.1),
        loss_fn=lambda m, b: m(b).sum(),
        batches=[],
    )
    with pytest.raises(ValueError, match="empty"):
        next(task.batch_stream())


def test_non_scalar_loss_and_frozen_model_are_rejected():
    task = Task(
        model_fn=lambda: nn.Linear(2, 1),
        optimizer_fn=lambda p: torch.optim.SGD(p, lr=0.1),
        loss_fn=lambda m, b: m(b),
        batches=[torch.ones(3, 2)],
    )
    model, _ = task.build()
    with pytest.raises(autoclip.TaskError, match="scalar"):
        task.compute_loss(model, torch.ones(3, 2))

    def frozen():
        m = nn.Linear(2, 1)
        m.requires_grad_(False)
        return m

    with pytest.raises(autoclip.TaskError, match="no trainable parameters"):
        Task(frozen, lambda p: torch.optim.SGD(p, lr=0.1), lambda m, b: m(b).sum(), [1]).build()


def test_load_task_targets(tmp_path):
    assert load_task("tests/_tasks.py:make_task").name == "tiny"
    f = tmp_path / "mytask.py"
    f.write_text("from _tasks import make_task\nTASK = make_task(steps=3)\n")
    assert load_task(f"{f}:TASK").steps == 3
    with pytest.raises(autoclip.TaskError, match="no such file"):
        load_task("missing.py:make_task")
    with pytest.raises(autoclip.TaskError, match="has no attribute 'nope'"):
        load_task("tests/_tasks.py:nope")
    with pytest.raises(autoclip.TaskError, match="not an autoclip.Task"):
        load_task("tests/_tasks.py:not_a_task")
    with pytest.raises(autoclip.TaskError, match="cannot import module"):
        load_task("no_such_pkg.mod:x")
    with pytest.raises(autoclip.TaskError, match="no bundled study"):
        load_task("no_such_study")


def _task(**kw):
    return Task(
        model_fn=lambda: nn.Linear(2, 1),
        optimizer_fn=lambda p: torch.optim.SGD(p, lr=0.1),
        loss_fn=lambda m, b: m(b).sum(),
        batches=[torch.ones(1, 2)],
        **kw,
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("device", "gpu0"),
        ("autocast_dtype", torch.float32),
        ("grad_scaler", "yes"),
        ("accumulation_steps", 0),
    ],
)
def test_bad_training_setup_fields_name_the_field(field, value):
    with pytest.raises(autoclip.TaskError, match=f"Task.{field}"):
        _task(**{field: value})


def test_batches_are_moved_to_the_device_and_the_loss_runs_under_autocast():
    from autoclip.task import move_to

    class Pair(NamedTuple):
        x: torch.Tensor
        y: list

    batch = {"a": Pair(torch.ones(2), [torch.zeros(1), 3]), "b": "text"}
    moved = move_to(batch, "cpu")
    assert isinstance(moved["a"], Pair) and moved["a"].y[1] == 3 and moved["b"] == "text"
    assert moved["a"].x is batch["a"].x  # already there: no copy
    task = _task(autocast_dtype=torch.bfloat16, device="cpu")
    model, _ = task.build()
    seen = []
    spy = replace(task, loss_fn=lambda m, b: seen.append(m(b).dtype) or m(b).sum())
    spy.compute_loss(model, torch.ones(1, 2))
    assert seen == [torch.bfloat16]
    assert task.make_scaler() is None
    assert isinstance(_task(grad_scaler=True).make_scaler(), torch.amp.GradScaler)
