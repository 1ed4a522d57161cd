import math

import pytest

from autoclip.objectives import (
    SPIKE_WINDOW,
    convergence_speed,
    evaluate,
    final_loss,
    instability,
    loss_spikes,
    steps_to_target,
)
from autoclip.training import TrainLog


def log_of(losses, planned=None, diverged=False, eval_loss=None):
    n = len(losses)
    return TrainLog(
        losses=tuple(losses),
        norms=(1.0,) * n,
        thresholds=(math.nan,) * n,
        clipped=(False,) * n,
        planned_steps=planned or n,
        diverged=diverged,
        reason="x" if diverged else None,
        eval_loss=eval_loss,
    )


def test_final_loss_is_the_median_of_the_tail_or_the_eval_loss():
    losses = [10.0] * 90 + [1.0] * 9 + [100.0]
    assert final_loss(log_of(losses)) == 1.0  # one bad batch at the end does not count
    assert final_loss(log_of(losses, eval_loss=0.5)) == 0.5
    assert final_loss(log_of([4.0, 3.0, math.nan], diverged=True)) == 4.0


def test_speed_is_the_normalised_area_and_divergence_counts_as_no_progress():
    assert convergence_speed(log_of([2.0, 1.0, 1.0, 0.0])) == pytest.approx((1 + 0.5 + 0.5) / 4)
    fast = convergence_speed(log_of([2.0, 0.2, 0.2, 0.2]))
    slow = convergence_speed(log_of([2.0, 1.8, 1.0, 0.2]))
    assert fast < slow
    # Stopped after 2 of 4 planned steps: the missing steps count as 1.
    assert convergence_speed(log_of([2.0, 1.0], planned=4, diverged=True)) == pytest.approx(
        (1 + 0.5 + 1 + 1) / 4
    )


def test_instability_counts_spikes_against_the_recent_median():
    calm = [1.0] * 100
    spiky = list(calm)
    spiky[50] = spiky[80] = 5.0
    assert loss_spikes(calm) == []
    assert loss_spikes(spiky) == [50, 80]
    assert instability(log_of(spiky)) == pytest.approx(0.02)
    assert instability(log_of([1.0] * 5, diverged=True)) == 1.0
    settled = [10.0] + [0.02, 0.05] * 50  # batch noise near convergence: no spikes
    assert loss_spikes(settled) == []
    early = [1.0] * SPIKE_WINDOW
    early[3] = 9.0  # no full window before it yet: not judged
    assert loss_spikes(early) == []


def test_steps_to_target_and_evaluate():
    log = log_of([3.0, 2.0, 1.0, 0.5])
    assert steps_to_target(log, 1.0) == 2
    assert steps_to_target(log, 0.1) is None
    assert steps_to_target(log, None) is None
    assert evaluate(log).as_tuple() == (final_loss(log), convergence_speed(log), instability(log))
