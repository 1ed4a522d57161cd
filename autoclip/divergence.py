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
At so low a factor one outlier batch (heavy-tailed targets) passes it at the same step in
every race, so the races judge the median of the last ``explode_window=5`` losses: a loss
that *stays* up has exploded, one that comes back was a spike.

>>> check = DivergenceCheck()
>>> check(0, loss=2.0, finite=True) is None
True
>>> check(1, loss=2500.0, finite=True)
'loss exploded to 2500 (> 1000x the first, 2) at step 1'
>>> DivergenceCheck(skips_nonfinite=False)(0, loss=1.0, finite=False)
'non-finite gradient norm at step 0 (nothing skips the step)'
>>> check = DivergenceCheck(explode_factor=4, explode_window=3)
>>> [check(t, loss, True) for t, loss in enumerate([1.0, 1.0, 9.0, 1.0])]  # a spike
[None, None, None, None]
>>> [check(t, loss, True) for t, loss in enumerate([9.0, 9.0], start=4)][-1]
'loss stayed above 4x the first (1): the median of the last 3 steps was 9 at step 5'
"""

from __future__ import annotations

import math
import statistics
from collections import deque

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
        explode_window: the explosion is judged on the median of the last this many losses
            (1: the loss itself).
    """

    def __init__(
        self,
        *,
        skips_nonfinite: bool = True,
        explode_factor: float = EXPLODE_FACTOR,
        explode_window: int = 1,
    ) -> None:
        self.skips_nonfinite = skips_nonfinite
        self.explode_factor = explode_factor
        self.first_loss: float | None = None
        self.skipped_in_row = 0
        self._recent: deque[float] = deque(maxlen=explode_window)

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
        if self._recent.maxlen == 1:  # training's own check, every step: the loss itself
            if first > 0 and loss > self.explode_factor * first:
                return (
                    f"loss exploded to {loss:.4g} (> {self.explode_factor:g}x the first, "
                    f"{first:.4g}) at step {step}"
                )
        else:
            self._recent.append(loss)
            level = statistics.median(self._recent)
            if first > 0 and level > self.explode_factor * first:
                return (
                    f"loss stayed above {self.explode_factor:g}x the first ({first:.4g}): the "
                    f"median of the last {len(self._recent)} steps was {level:.4g} at step "
                    f"{step}"
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
