"""autoclip: measure gradients, propose clipping thresholds, tune them with Optuna."""

from autoclip import functional
from autoclip.clippers import (
    AGC,
    BaseClipper,
    ClipperInfo,
    ClipResult,
    NormClip,
    QuantileClip,
    ValueClip,
    ZScoreClip,
    create_clipper,
    list_clippers,
    register_clipper,
)
from autoclip.errors import (
    AutoclipError,
    ConfigError,
    NonFiniteGradientError,
    StorageError,
    TaskError,
)
from autoclip.task import Task, load_task
from autoclip.training import TrainLog, train

__version__ = "0.1.0"

__all__ = [
    "AGC",
    "AutoclipError",
    "BaseClipper",
    "ClipResult",
    "ClipperInfo",
    "ConfigError",
    "NonFiniteGradientError",
    "NormClip",
    "QuantileClip",
    "StorageError",
    "Task",
    "TaskError",
    "TrainLog",
    "ValueClip",
    "ZScoreClip",
    "create_clipper",
    "functional",
    "list_clippers",
    "load_task",
    "register_clipper",
    "train",
]
