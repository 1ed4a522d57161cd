"""A clipper's counters and adaptive state, and their save and restore.

:class:`_ClipperState` is the part of :class:`~autoclip.clippers.BaseClipper` that
``state_dict()`` / ``load_state_dict()`` carry across a resume, so that a resumed run clips
exactly as before. It reads what ``BaseClipper.__init__`` sets up: ``_state`` (the counters
``steps``, ``skipped``, ``clipped``, ``spikes`` and the adaptive state tensors),
``_host_steps`` and ``_host_clipped`` (finite host steps not yet folded in), and ``config``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from autoclip.errors import ConfigError


class _ClipperState:
    """Counters, adaptive state and ``state_dict`` of a clipper (mixed into BaseClipper)."""

    def _fold_steps(self) -> None:
        if self._host_steps:
            self._state["steps"] += self._host_steps
            self._host_steps = 0
        if self._host_clipped:
            self._state["clipped"] += self._host_clipped
            self._host_clipped = 0

    @property
    def steps(self) -> Tensor:
        """Number of calls so far (tensor)."""
        self._fold_steps()
        return self._state["steps"]

    @property
    def skipped(self) -> Tensor:
        """Number of skipped steps: non-finite, or spikes under ``spike="skip"`` (tensor)."""
        return self._state["skipped"]

    @property
    def spikes(self) -> Tensor:
        """Number of steps skipped as spikes (``spike="skip"``; tensor)."""
        return self._state["spikes"]

    @property
    def clipped(self) -> Tensor:
        """Number of steps that were clipped (tensor)."""
        self._fold_steps()
        return self._state["clipped"]

    @property
    def norm_threshold(self) -> float | None:
        """The global-norm level the next step would be clipped above, as a host float (a
        sync); None for a clipper whose threshold is not a level of the global norm (value,
        AGC). Reports draw it on the norm plot."""
        return None

    def _to(self, device: torch.device) -> None:
        if self._state["steps"].device != device:
            self._fold_steps()
            self._state = {k: v.to(device) for k, v in self._state.items()}

    def state_dict(self) -> dict[str, Any]:
        """Adaptive state and counters, plus the config, so a resumed run clips identically."""
        self._fold_steps()
        return {
            "config": self.config,
            "state": {k: v.detach().clone() for k, v in self._state.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; a malformed one is a one-line ConfigError."""
        if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict):
            raise ConfigError(
                "state_dict must be the dict clipper.state_dict() returns, with a 'state' dict "
                f"of tensors, but got {type(state_dict).__name__}"
                + (f" with keys {sorted(state_dict)}" if isinstance(state_dict, dict) else "")
            )
        not_tensors = sorted(k for k, v in state_dict["state"].items() if not torch.is_tensor(v))
        if not_tensors:
            raise ConfigError(
                f"state_dict['state'] entries {not_tensors} are not tensors; pass the dict "
                "clipper.state_dict() returned (torch.load it with weights_only=False if saved)"
            )
        if state_dict.get("config", self.config) != self.config:
            raise ConfigError(
                f"state_dict was saved by {state_dict['config']}, but this clipper is "
                f"{self.config}; build the clipper with create_clipper(**config) first"
            )
        saved = dict(state_dict["state"])
        # Saved before the spike counter existed: it counted no spikes.
        saved.setdefault("spikes", torch.zeros((), dtype=torch.long))
        missing = set(self._state) - set(saved)
        if missing:
            raise ConfigError(f"state_dict lacks the entries {sorted(missing)}")
        device = self._state["steps"].device
        # Each entry keeps this clipper's dtype (ZScoreClip's state used to be float64).
        self._state = {
            k: saved[k].detach().clone().to(device=device, dtype=v.dtype)
            for k, v in self._state.items()
        }
        self._host_steps = self._host_clipped = 0
