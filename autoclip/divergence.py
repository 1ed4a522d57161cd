"""The one divergence rule, shared by the probe's warm-up and the training loop of a trial.

A run has diverged, and stops, at the first step where

* the loss is NaN/inf;
* the loss exceeds ``EXPLODE_FACTOR`` (1000) times the first step's loss: a short run does not
  come back from there;
* the gradient is non-finite and nothing skips the step (the weights would become NaN);
* ``MAX_SKIPPED_IN_ROW`` (10) steps in a row were skipped (non-finite gradients skipped by a
  clipper, the probe or a GradScaler; spikes a clipper skips): the skips hide a run that has
  already diverged.

The measured races of :mod:`autoclip.response` apply the same rule with a lower factor
(``explode_factor=4``): a race is a comparison, and a race at 4x its first loss has lost it.

>>> check = DivergenceCheck()
>>> check(0, loss=2.0, finite=True) is None
True
>>> check(1, loss=2500.0, finite=True)
'loss exploded to 2500 (> 1000x the first, 2) at step 1'
>>> DivergenceCheck(skips_nonfinite=False)(0, loss=1.0, finite=False)
'non-finite gradient norm at step 0 (nothing skips the step)'
"""

from __future__ import annotations

import math

__all__ = ["EXPLODE_FACTOR", "MAX_SKIPPED_IN_ROW", "DivergenceCheck"]

# A loss 1000x its starting value is not coming back within a short run.
EXPLODE_FACTOR = 1e3
# Ten skipped steps in a row: the skips hide a run that has already diverged.
MAX_SKIPPED_IN_ROW = 10


class DivergenceCheck:
    """Feed each step's loss and gradient finiteness in order; get the reason once diverged.

    Args:
        skips_nonfinite: whether a step with a non-finite gradient is skipped (a clipper,
            the probe's own skip, a GradScaler). Without a skip, one such step diverges.
        explode_factor: the multiple of the first loss that counts as an explosion.
    """

    def __init__(
        self, *, skips_nonfinite: bool = True, explode_factor: float = EXPLODE_FACTOR
    ) -> None:
        self.skips_nonfinite = skips_nonfinite
        self.explode_factor = explode_factor
        self.first_loss: float | None = None
        self.skipped_in_row = 0

    def __call__(
        self, step: int, loss: float, finite: bool, skipped: bool | None = None
    ) -> str | None:
        """None while the run is fine; the reason (one line) at the step it diverged.

        ``skipped``: whether the step's update was skipped (default: ``not finite``); a
        clipper that also skips spikes passes its own flag.
        """
        if not math.isfinite(loss):
            return f"non-finite loss ({loss}) at step {step}"
        if self.first_loss is None:
            self.first_loss = loss
        first = self.first_loss
        if first > 0 and loss > self.explode_factor * first:
            return (
                f"loss exploded to {loss:.4g} (> {self.explode_factor:g}x the first, "
                f"{first:.4g}) at step {step}"
            )
        if not finite and not self.skips_nonfinite:
            return f"non-finite gradient norm at step {step} (nothing skips the step)"
        if not (not finite if skipped is None else skipped):
            self.skipped_in_row = 0
            return None
        self.skipped_in_row += 1
        if self.skipped_in_row >= MAX_SKIPPED_IN_ROW:
            return (
                f"{MAX_SKIPPED_IN_ROW} skipped steps in a row (non-finite gradients or spikes) "
                f"by step {step}"
            )
        return None
