"""Loss spikes: a robust z-score of the loss over a window of accepted steps.

The guard of axolotl and llm.c: a step whose loss lies more than ``loss_z`` robust standard
deviations above the median of the last ``loss_window`` accepted losses is skipped, and never
enters the window it is judged by. The spread is the median absolute deviation (x 1.4826, the
normal-consistent factor), floored at 0.1% of the median so that a run whose losses are all
equal does not call every small wobble a spike. Nothing is judged before ``MIN_HISTORY``
losses were accepted. Everything stays on the device (``nanmedian`` over a ring buffer).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from autoclip.errors import ConfigError

MIN_HISTORY = 10  # fewer accepted losses than this: too few for a median and a MAD
MAD_TO_STD = 1.4826  # MAD of a normal distribution x this = its standard deviation
REL_FLOOR = 1e-3  # the spread is at least this fraction of the median loss


def check_loss_guard(loss_z: float | None, loss_window: int) -> None:
    if loss_z is not None and not (
        isinstance(loss_z, int | float) and loss_z > 0 and math.isfinite(loss_z)
    ):
        raise ConfigError(f"`loss_z` must be None or a finite number > 0, but got {loss_z!r}")
    if not (isinstance(loss_window, int) and loss_window >= MIN_HISTORY):
        raise ConfigError(f"`loss_window` must be an int >= {MIN_HISTORY}, but got {loss_window!r}")


def initial_state(loss_window: int) -> dict[str, Tensor]:
    return {
        "loss_buffer": torch.full((loss_window,), math.nan),
        "loss_pos": torch.zeros(1, dtype=torch.long),
    }


def loss_spike(state: dict[str, Tensor], loss: Tensor, loss_z: float) -> Tensor:
    """Whether ``loss`` (0-dim) is a spike against the accepted losses (bool tensor)."""
    buf = state["loss_buffer"]
    x = loss.detach().to(device=buf.device, dtype=buf.dtype).reshape(())
    median = torch.nanmedian(buf)
    spread = torch.nanmedian((buf - median).abs()) * MAD_TO_STD
    spread = torch.maximum(spread, median.abs() * REL_FLOOR + 1e-12)
    enough = (~torch.isnan(buf)).sum() >= MIN_HISTORY
    return enough & ((x - median) / spread > loss_z) | ~torch.isfinite(x)


def record_loss(state: dict[str, Tensor], loss: Tensor, accept: Tensor) -> None:
    """Append ``loss`` to the window where ``accept`` (a skipped or spiking step is not)."""
    buf, pos = state["loss_buffer"], state["loss_pos"]
    x = loss.detach().to(device=buf.device, dtype=buf.dtype).reshape(1)
    accept = accept & torch.isfinite(x[0])
    buf.index_copy_(0, pos, torch.where(accept, x, buf.index_select(0, pos)))
    state["loss_pos"] = (pos + accept) % buf.numel()
