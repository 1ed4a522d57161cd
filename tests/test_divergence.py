"""The one divergence rule: each clause fires exactly at its boundary."""

from __future__ import annotations

import math

import pytest

from autoclip.divergence import EXPLODE_FACTOR, MAX_SKIPPED_IN_ROW, DivergenceCheck


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_diverges_at_once(bad):
    check = DivergenceCheck()
    assert check(0, 1.0, True) is None
    assert check(1, bad, True) == f"non-finite loss ({bad}) at step 1"


def test_the_explosion_threshold_is_a_factor_of_the_first_loss():
    first = 0.5
    check = DivergenceCheck()
    assert check(0, first, True) is None
    assert check(1, EXPLODE_FACTOR * first, True) is None  # at the factor: not yet
    reason = check(2, math.nextafter(EXPLODE_FACTOR * first, math.inf), True)
    assert reason is not None and "exploded" in reason and "step 2" in reason


def test_skipped_non_finite_steps_count_in_a_row_and_reset():
    check = DivergenceCheck(skips_nonfinite=True)
    for step in range(MAX_SKIPPED_IN_ROW - 1):
        assert check(step, 1.0, False) is None
    assert check(99, 1.0, True) is None  # a finite step resets the count
    for step in range(MAX_SKIPPED_IN_ROW - 1):
        assert check(step, 1.0, False) is None
    assert "in a row" in check(100, 1.0, False)


def test_without_a_skip_one_non_finite_gradient_diverges():
    assert "nothing skips" in DivergenceCheck(skips_nonfinite=False)(3, 1.0, False)


def test_skipped_spikes_count_too():
    check = DivergenceCheck()
    for step in range(MAX_SKIPPED_IN_ROW - 1):
        assert check(step, 1.0, True, skipped=True) is None
    assert "in a row" in check(50, 1.0, True, skipped=True)


def test_a_zero_first_loss_never_counts_as_an_explosion():
    check = DivergenceCheck()
    assert check(0, 0.0, True) is None
    assert check(1, 1e9, True) is None
