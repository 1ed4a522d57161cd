"""The search space: a proposal's strategies and ranges as Optuna parameters.

Which parameter each strategy searches, and on which scale, is the clipper registry's
(:class:`~autoclip.clippers.ClipperInfo`); the ranges are the proposal's. So a clipper a user
registers with ``param=...`` is searched like the built-ins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna

from autoclip._format import format_config
from autoclip.clippers import BaseClipper, clipper_info, create_clipper, list_clippers
from autoclip.errors import ConfigError
from autoclip.propose import Proposal

PREFIX = "clip"


def _candidate_params(proposal: Proposal, strategy: str) -> dict[str, Any]:
    for c in proposal.candidates:
        if c.strategy == strategy:
            return dict(c.params)
    return {}


def check_strategies(proposal: Proposal | None, strategies: Sequence[str]) -> tuple[str, ...]:
    """``strategies`` as a tuple, each a registered clipper with a searched parameter (and,
    given a proposal, a range in it); else one ConfigError naming the choices."""
    if isinstance(strategies, str) or not all(isinstance(s, str) for s in strategies):
        raise ConfigError(f"strategies must be a list of clipper names, but got {strategies!r}")
    names = [c.name for c in list_clippers() if c.param is not None]
    unknown = [s for s in strategies if s not in names]
    if unknown:
        raise ConfigError(
            f"cannot search strategies {unknown}; choose from {names} (or register the "
            "clipper with register_clipper(..., param=...))"
        )
    if proposal is not None:
        missing = [s for s in strategies if s not in proposal.space.ranges]
        if missing:
            raise ConfigError(
                f"the proposal has no search range for {missing} (it covers "
                f"{sorted(proposal.space.ranges)}); register the clipper before proposing"
            )
    return tuple(strategies)


def suggest_clipper(
    trial: optuna.Trial,
    proposal: Proposal,
    *,
    strategies: Sequence[str] | None = None,
    prefix: str = PREFIX,
) -> BaseClipper:
    """Sample a clipping configuration inside an Optuna objective and return the clipper.

    Parameters are named ``{prefix}.strategy`` and ``{prefix}.{strategy}.{param}``, with the
    ranges of ``proposal.space`` on the registry's scale; adaptive clippers come warm-started
    from the probe's norms.

    >>> import torch
    >>> from torch import nn
    >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    >>> batches = [(x[i : i + 16], x[i : i + 16].sum(1, keepdim=True)) for i in range(0, 64, 16)]
    >>> loss_fn = lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1])
    >>> import autoclip
    >>> task = autoclip.Task(lambda: nn.Linear(4, 1), lambda p: torch.optim.SGD(p, lr=0.1),
    ...                      loss_fn, batches, steps=20, name="doc")
    >>> import optuna
    >>> proposal = autoclip.suggest_task(task, budget=40)
    >>> def objective(trial):
    ...     clipper = suggest_clipper(trial, proposal, strategies=["norm"])
    ...     return autoclip.objectives.final_loss(autoclip.train(task, clipper))
    >>> study = optuna.create_study()
    >>> study.optimize(objective, n_trials=2)
    >>> sorted(study.best_params)
    ['clip.norm.max_norm', 'clip.strategy']
    """
    strategies = check_strategies(proposal, strategies or proposal.space.strategies)
    strategy = trial.suggest_categorical(f"{prefix}.strategy", list(strategies))
    info = clipper_info(strategy)
    params = _candidate_params(proposal, strategy)
    low, high = proposal.space.range(strategy)
    params[info.param] = trial.suggest_float(
        f"{prefix}.{strategy}.{info.param}", low, high, log=info.log
    )
    return create_clipper(strategy, **params).warm_start(proposal.warm_norms)


def _enqueue_params(proposal: Proposal, strategies: Sequence[str], prefix: str = PREFIX):
    """Trial parameters for the recommended configuration, then each other candidate, that
    the space can express."""
    out = []
    for c in [proposal.recommended, *proposal.candidates]:
        if c.strategy not in strategies or c.strategy not in proposal.space.ranges:
            continue
        param = clipper_info(c.strategy).param
        low, high = proposal.space.range(c.strategy)
        value = float(np.clip(c.params[param], low, high))
        params = {f"{prefix}.strategy": c.strategy, f"{prefix}.{c.strategy}.{param}": value}
        if params not in out:
            out.append(params)
    return out


def _ladder_params(
    proposal: Proposal, strategy: str, n: int, prefix: str = PREFIX
) -> list[dict[str, Any]]:
    """``n`` trial parameters of ``strategy`` evenly spaced over its range (log-spaced on a
    log scale) and through the recommended value, which comes first; then the rest, nearest
    first, the looser of two equally near first.

    A bracket's first members are these: with one parameter to search and a bracket of
    nine, an evenly spaced ladder covers the range that the measurement left open (a
    sampler's nine independent draws leave gaps and clumps), and successive halving then
    spends its later rungs on the ladder's best.
    """
    info = clipper_info(strategy)
    low, high = proposal.space.range(strategy)
    rec = proposal.recommended
    centre = rec.params.get(info.param) if rec.strategy == strategy else None
    if centre is None:
        centre = _candidate_params(proposal, strategy).get(info.param)
    if centre is None:
        centre = float(np.sqrt(low * high)) if info.log else (low + high) / 2
    centre = float(np.clip(centre, low, high))
    m = n | 1  # odd, so that a range centred on the value is laddered symmetrically
    values = np.geomspace(low, high, m) if info.log else np.linspace(low, high, m)
    # through the centre: shift the ladder so that its nearest rung is the centre itself
    scale = np.log if info.log else (lambda v: v)
    nearest = int(np.argmin(np.abs(scale(values) - scale(centre))))
    if info.log:
        values = values * (centre / values[nearest])
    else:
        values = values + (centre - values[nearest])
    # The shifted ends may overshoot the range by the rounding of its ends (2 significant
    # digits: up to 5%), a tenth of a step here: those are pulled in; a rung further out
    # (the centre far from the range's middle) is dropped.
    step = (scale(high) - scale(low)) / max(1, m - 1)
    lo, hi = scale(low) - step / 10, scale(high) + step / 10
    values = [float(np.clip(v, low, high)) for v in values if lo <= scale(v) <= hi]
    values.sort(key=lambda v: (round(abs(scale(v) - scale(centre)), 9), -v))
    name = f"{prefix}.{strategy}.{info.param}"
    return [{f"{prefix}.strategy": strategy, name: v} for v in values[:n]]


def default_strategies(proposal: Proposal) -> tuple[str, ...]:
    """What ``tune`` searches when not told: the recommended strategy alone.

    A default search has nine trials; spread over five strategies that is one or two a
    strategy, each judged at a short rung, where an adaptive clipper's behaviour at full
    length is least visible (studies/results/tune.md, before this rule: the adaptive picks
    ended up to 2x worse than the best fixed threshold). Nine points of one threshold, on a
    ladder through the measured value, are a search of it.
    """
    rec = proposal.recommended.strategy
    return (rec,) if rec in proposal.space.ranges else tuple(proposal.space.strategies)


def first_trials(proposal: Proposal, strategies: Sequence[str], n: int) -> list[dict[str, Any]]:
    """The parameters a study enqueues before its sampler: for one strategy a ladder of
    ``n`` over its range, for several the recommended configuration and each candidate."""
    if len(strategies) == 1:
        return _ladder_params(proposal, strategies[0], n)
    return _enqueue_params(proposal, strategies)[:n]


def describe_config(config: dict[str, Any] | None) -> str:
    """``name(param=value)`` with the registry's searched parameter (all of them for a clipper
    the registry does not know)."""
    if config is None:
        return "no clipping"
    try:
        info = clipper_info(config["name"])
    except ConfigError:
        return format_config(config)
    return info.describe(config)
