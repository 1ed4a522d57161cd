"""autoclip: measure gradients, propose clipping thresholds, tune them with Optuna."""

from autoclip import functional, objectives, report
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
from autoclip.probe import GradTrace, probe, probe_task
from autoclip.propose import Candidate, Proposal, SearchSpace, propose, suggest, suggest_task
from autoclip.response import ResponseCurve, measure_response
from autoclip.search import TrialRecord, TuneResult, load_result, suggest_clipper, tune
from autoclip.stats import GradStats, compute_stats
from autoclip.task import Task, load_task
from autoclip.training import TrainLog, train

__version__ = "0.1.0"

__all__ = [
    "AGC",
    "AutoclipError",
    "BaseClipper",
    "Candidate",
    "ClipResult",
    "ClipperInfo",
    "ConfigError",
    "GradStats",
    "GradTrace",
    "NonFiniteGradientError",
    "NormClip",
    "Proposal",
    "QuantileClip",
    "ResponseCurve",
    "SearchSpace",
    "StorageError",
    "Task",
    "TaskError",
    "TrainLog",
    "TrialRecord",
    "TuneResult",
    "ValueClip",
    "ZScoreClip",
    "compute_stats",
    "create_clipper",
    "functional",
    "list_clippers",
    "load_result",
    "load_task",
    "measure_response",
    "objectives",
    "probe",
    "probe_task",
    "propose",
    "register_clipper",
    "report",
    "suggest",
    "suggest_clipper",
    "suggest_task",
    "train",
    "tune",
]
