import math

import pytest
import torch
from _tasks import make_exploding_task, make_task

from autoclip import ConfigError, NormClip
from autoclip.training import TrainLog, train


def test_train_is_deterministic_and_learns():
    a = train(make_task())
    b = train(make_task())
    assert a.losses == b.losses
    assert not a.diverged and a.reason is None
    assert a.steps_run == 30 and a.planned_steps == 30
    assert a.losses[-1] < 0.5 * a.losses[0]
    assert a.eval_loss is not None and math.isfinite(a.eval_loss)
    assert all(math.isnan(t) for t in a.thresholds)


def test_clipper_is_applied_and_logged():
    log = train(make_task(), NormClip(0.1))
    assert log.clipper == {"name": "norm", "max_norm": 0.1, "norm_type": 2.0, "nonfinite": "skip"}
    assert set(log.thresholds) == {0.1} or all(abs(t - 0.1) < 1e-6 for t in log.thresholds)
    # the logged norms are pre-clip: some exceed the threshold, and those steps are flagged
    assert any(log.clipped)
    assert all(c == (n > 0.1) for n, c in zip(log.norms, log.clipped, strict=True))
    assert log.clipped_fraction == sum(log.clipped) / log.steps_run


def test_divergence_ends_the_run_with_a_reason():
    log = train(make_exploding_task(steps=200))
    assert log.diverged
    assert log.steps_run < 200
    assert "step" in log.reason
    assert log.eval_loss is None


def test_clipping_rescues_the_exploding_task():
    log = train(make_exploding_task(steps=200), NormClip(0.5))
    assert not log.diverged


def test_lr_scale_multiplies_the_learning_rate():
    seen = []
    task = make_task(steps=2)
    orig = task.optimizer_fn

    def spy(params):
        opt = orig(params)
        seen.append(opt)
        return opt

    from dataclasses import replace

    train(replace(task, optimizer_fn=spy), lr_scale=0.5)
    assert seen[0].param_groups[0]["lr"] == 0.025


def test_train_log_round_trips():
    log = train(make_task(steps=5), NormClip(1.0))
    assert TrainLog.from_dict(log.to_dict()) == log
    assert isinstance(torch.tensor(log.losses), torch.Tensor)


# -- training like the user: steps, accumulation, AMP ------------------------------------------


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_step_counts_are_one_line_config_errors(steps):
    with pytest.raises(ConfigError, match="`steps` must be an int >= 1") as info:
        train(make_task(), steps=steps)
    assert "\n" not in str(info.value)


def _pairs_task(accumulation_steps: int):
    """The tiny task with micro-batches of 8 (accumulated) or their concatenation (16)."""
    from dataclasses import replace

    task = make_task(steps=12)
    halves = [(x[i : i + 8], y[i : i + 8]) for x, y in task.batches for i in (0, 8)]
    if accumulation_steps == 1:
        return replace(task, batches=list(task.batches))
    return replace(task, batches=halves, accumulation_steps=accumulation_steps)


def test_accumulated_micro_batches_train_like_the_whole_batch():
    whole = train(_pairs_task(1), NormClip(0.3))
    clipper = NormClip(0.3)
    accumulated = train(_pairs_task(2), clipper)
    assert clipper.steps.item() == 12  # once per optimizer step, not per micro-batch
    assert accumulated.losses == pytest.approx(whole.losses, rel=1e-5)
    assert accumulated.norms == pytest.approx(whole.norms, rel=1e-5)
    assert any(accumulated.clipped) and accumulated.clipped == whole.clipped


def test_grad_scaler_training_equals_full_precision_training():
    """A power-of-two loss scale is exact in float32, so a scaled run clips and trains as the
    unscaled one: the clipper measured unscaled gradients."""
    from dataclasses import replace

    plain = train(make_task(steps=20), NormClip(0.3))
    scaled = train(replace(make_task(steps=20), grad_scaler=True), NormClip(0.3))
    assert scaled.losses == pytest.approx(plain.losses, rel=1e-6)
    assert scaled.norms == pytest.approx(plain.norms, rel=1e-6)
    assert any(scaled.clipped)


def test_autocast_task_runs_the_loss_in_bfloat16():
    from dataclasses import replace

    seen = []
    task = make_task(steps=20)

    def loss_fn(model, batch):
        x, y = batch
        out = model(x)
        seen.append(out.dtype)
        return torch.nn.functional.mse_loss(out.float(), y)

    log = train(replace(task, loss_fn=loss_fn, autocast_dtype=torch.bfloat16), NormClip(1.0))
    assert set(seen) == {torch.bfloat16}
    assert not log.diverged and log.losses[-1] < 0.5 * log.losses[0]
