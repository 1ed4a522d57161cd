"""The one formatter of configurations and numbers in tables, summaries and reports.

Four significant digits: enough to tell apart two trials' thresholds from a search (a
proposal's thresholds are rounded to two already), short enough for a table column.

>>> format_value(0.000123456), format_value(12345.0), format_value(3), format_value(True)
('0.0001235', '1.234e+04', '3', 'True')
>>> format_config({"name": "quantile", "quantile": 0.5, "window": 100})
'quantile(quantile=0.5, window=100)'
>>> format_config({"name": "norm", "max_norm": 2 / 3, "norm_type": 2.0}, keys=("max_norm",))
'norm(max_norm=0.6667)'
>>> format_config(None)
'no clipping'
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["DIGITS", "format_config", "format_value"]

DIGITS = 4


def format_value(value: Any) -> str:
    """A float at :data:`DIGITS` significant digits (``nan``, ``inf`` as such); else ``str``."""
    if isinstance(value, float):
        return f"{value:.{DIGITS}g}" if math.isfinite(value) else str(value)
    return str(value)


def format_config(config: dict[str, Any] | None, keys: Iterable[str] | None = None) -> str:
    """``name(k=v, ...)`` of a clipper config (all parameters, or only ``keys``)."""
    if config is None:
        return "no clipping"
    params = {k: v for k, v in config.items() if k != "name"}
    if keys is not None:
        wanted = set(keys)
        params = {k: v for k, v in params.items() if k in wanted}
    args = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
    return f"{config.get('name', '?')}({args})"
