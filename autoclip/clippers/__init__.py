"""Gradient clippers: fixed (norm, value) and adaptive (quantile, z-score, AGC)."""

from autoclip.clippers._agc import AGC
from autoclip.clippers._base import BaseClipper, ClipResult
from autoclip.clippers._norm import NormClip, ValueClip
from autoclip.clippers._quantile import QuantileClip
from autoclip.clippers._registry import (
    ClipperInfo,
    create_clipper,
    list_clippers,
    register_clipper,
)
from autoclip.clippers._zscore import ZScoreClip

__all__ = [
    "AGC",
    "BaseClipper",
    "ClipResult",
    "ClipperInfo",
    "NormClip",
    "QuantileClip",
    "ValueClip",
    "ZScoreClip",
    "create_clipper",
    "list_clippers",
    "register_clipper",
]
