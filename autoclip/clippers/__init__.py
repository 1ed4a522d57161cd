"""Gradient clippers: fixed (norm, value) and adaptive (quantile, z-score, AGC)."""

from autoclip.clippers._agc import AGC
from autoclip.clippers._base import BaseClipper
from autoclip.clippers._checks import check_fraction, check_positive
from autoclip.clippers._norm import NormClip, ValueClip
from autoclip.clippers._normbased import NormBasedClipper
from autoclip.clippers._quantile import QuantileClip
from autoclip.clippers._registry import (
    ClipperInfo,
    clipper_info,
    create_clipper,
    list_clippers,
    register_clipper,
    searchable,
    unregister_clipper,
)
from autoclip.clippers._result import ClipResult
from autoclip.clippers._zscore import ZScoreClip

__all__ = [
    "AGC",
    "BaseClipper",
    "ClipResult",
    "NormBasedClipper",
    "ClipperInfo",
    "NormClip",
    "QuantileClip",
    "ValueClip",
    "ZScoreClip",
    "check_fraction",
    "check_positive",
    "clipper_info",
    "create_clipper",
    "list_clippers",
    "register_clipper",
    "searchable",
    "unregister_clipper",
]
