"""The search space: a proposal's strategies and ranges as Optuna parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna

from autoclip.clippers import BaseClipper, create_clipper
from autoclip.errors import ConfigError
from autoclip.propose import Proposal

PREFIX = "clip"

_SEARCHED = {  # strategy -> (parameter, SearchSpace field, log scale)
    "norm": ("max_norm", "norm", True),
    "value": ("clip_value", "value", True),
    "quantile": ("quantile", "quantile", False),
    "zscore": ("z_thresh", "z_thresh", False),
    "agc": ("clipping", "agc", True),
}


def _candidate_params(proposal: Proposal, strategy: str) -> dict[str, Any]:
    for c in proposal.candidates:
        if c.strategy == strategy:
            return dict(c.params)
    return {}


def _range(proposal: Proposal, strategy: str) -> tuple[float, float]:
    low, high = getattr(proposal.space, _SEARCHED[strategy][1])
    return float(low), float(high)


def suggest_clipper(
    trial: optuna.Trial,
    proposal: Proposal,
    *,
    strategies: Sequence[str] | None = None,
    prefix: str = PREFIX,
) -> BaseClipper:
    """Sample a clipping configuration inside an Optuna objective and return the clipper.

    Parameters are named ``{prefix}.strategy`` and ``{prefix}.{strategy}.{param}``, with the
    ranges of ``proposal.space``; adaptive clippers come warm-started from the probe's norms.
    """
    strategies = tuple(strategies or proposal.space.strategies)
    unknown = [s for s in strategies if s not in _SEARCHED]
    if unknown:
        raise ConfigError(f"cannot search strategies {unknown}; choose from {sorted(_SEARCHED)}")
    strategy = trial.suggest_categorical(f"{prefix}.strategy", list(strategies))
    param, _, log = _SEARCHED[strategy]
    params = _candidate_params(proposal, strategy)
    low, high = _range(proposal, strategy)
    params[param] = trial.suggest_float(f"{prefix}.{strategy}.{param}", low, high, log=log)
    return create_clipper(strategy, **params).warm_start(proposal.warm_norms)


def _enqueue_params(proposal: Proposal, strategies: Sequence[str], prefix: str = PREFIX):
    """Trial parameters for the recommended configuration, then each other candidate, that
    the space can express."""
    out = []
    for c in [proposal.recommended, *proposal.candidates]:
        if c.strategy not in strategies or c.strategy not in _SEARCHED:
            continue
        param = _SEARCHED[c.strategy][0]
        low, high = _range(proposal, c.strategy)
        value = float(np.clip(c.params[param], low, high))
        params = {f"{prefix}.strategy": c.strategy, f"{prefix}.{c.strategy}.{param}": value}
        if params not in out:
            out.append(params)
    return out


def describe_config(config: dict[str, Any] | None) -> str:
    if config is None:
        return "no clipping"
    name = config["name"]
    key = _SEARCHED.get(name, (None,))[0]
    return f"{name}({key}={config[key]:.4g})" if key in config else name
