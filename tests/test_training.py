import math

import torch
from _tasks import make_exploding_task, make_task

from autoclip import NormClip
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
