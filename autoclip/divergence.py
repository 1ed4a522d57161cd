"""The one divergence rule, shared by the probe's warm-up and the training loop of a trial.

A run has diverged, and stops, at the first step where

* the loss is NaN/inf;
* the loss exceeds ``EXPLODE_FACTOR`` (1000) times the first step's loss: a short run does not
  come back from there;
* the gradient is non-finite and nothing skips the step (the weights would become NaN), or it
  was non-finite ``MAX_NONFINITE_IN_ROW`` (10) steps in a row although skipped: the skips are
  hiding a run that has already diverged.

>>> check = DivergenceCheck()
>>> check(0, loss=2.0, finite=True) is None
True
>>> check(1, loss=2500.0, finite=True)
'the loss exploded to 2500 (> 1000x the first, 2) at step 1'
>>> DivergenceCheck(skips_nonfinite=False)(0, loss=1.0, finite=False)
'a non-finite gradient at step 0 with nothing to skip the step'
"""

from __future__ import annotations

import math

__all__ = ["EXPLODE_FACTOR", "MAX_NONFINITE_IN_ROW", "DivergenceCheck"]

# A loss 1000x its starting value is not coming back within a short run.
EXPLODE_FACTOR = 1e3
# Ten skipped non-finite steps in a row: the skips hide a run that has already diverged.
MAX_NONFINITE_IN_ROW = 10


class DivergenceCheck:
    """Feed each step's loss and gradient finiteness in order; get the reason once diverged.

    Args:
        skips_nonfinite: whether a step with a non-finite gradient is skipped (a clipper with
            ``nonfinite="skip"``, the probe's own skip, a GradScaler). Without a skip, one
            such step is a divergence.
    """

    def __init__(self, *, skips_nonfinite: bool = True) -> None:
        self.skips_nonfinite = skips_nonfinite
        self.first_loss: float | None = None
        self.nonfinite_in_row = 0

    def __call__(self, step: int, loss: float, finite: bool) -> str | None:
        """None while the run is fine; the reason (one line) at the step it diverged."""
        if not math.isfinite(loss):
            return f"the loss became non-finite ({loss}) at step {step}"
        if self.first_loss is None:
            self.first_loss = loss
        first = self.first_loss
        if first > 0 and loss > EXPLODE_FACTOR * first:
            return (
                f"the loss exploded to {loss:.4g} (> {EXPLODE_FACTOR:g}x the first, {first:.4g}) "
                f"at step {step}"
            )
        if finite:
            self.nonfinite_in_row = 0
            return None
        if not self.skips_nonfinite:
            return f"a non-finite gradient at step {step} with nothing to skip the step"
        self.nonfinite_in_row += 1
        if self.nonfinite_in_row >= MAX_NONFINITE_IN_ROW:
            return (
                f"{MAX_NONFINITE_IN_ROW} steps in a row had non-finite gradients (by step {step})"
            )
        return None
