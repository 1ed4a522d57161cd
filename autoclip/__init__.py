"""autoclip: measure gradients, propose clipping thresholds, tune them with Optuna.

Submodules keep their own names here: ``autoclip.probe`` and ``autoclip.propose`` are the
modules (``import autoclip.probe as m`` gives the module), and their functions are
``autoclip.probe.probe`` and ``autoclip.propose.propose``. The one call before training is
:func:`suggest`.

>>> import autoclip
>>> import autoclip.probe as m
>>> m is autoclip.probe, callable(autoclip.probe.probe), callable(autoclip.suggest)
(True, True, True)
"""

from autoclip import functional, objectives, probe, propose, report, serialize
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
    UnsupportedError,
)
from autoclip.monitor import ClipMonitor
from autoclip.probe import GradTrace, probe_task
from autoclip.propose import Candidate, Proposal, SearchSpace, suggest, suggest_task
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
    "ClipMonitor",
    "ClipResult",
    "ClipperInfo",
    "ConfigError",
    "GradStats",
    "GradTrace",
    "NonFiniteGradientError",
    "UnsupportedError",
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
    "serialize",
    "suggest",
    "suggest_clipper",
    "suggest_task",
    "train",
    "tune",
]
