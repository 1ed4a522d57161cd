"""Opening a study's storage: in memory, a journal file, or an Optuna RDB URL."""

from __future__ import annotations

import copy
import importlib.util
import warnings

import optuna
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import FrozenTrial

from autoclip.errors import StorageError
from autoclip.search._journal import JournalFile
from autoclip.search._redact import normalize_url, redact_text, redact_url

# Heartbeat every 10 s; a trial silent for 3 intervals belongs to a dead worker.
HEARTBEAT_INTERVAL = 10
MAX_RETRY = 2  # a trial that kills its worker twice is not tried a third time
ATTR = "autoclip."  # prefix of the study/trial attributes autoclip owns


def open_storage(
    storage: str | optuna.storages.BaseStorage | None,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
) -> optuna.storages.BaseStorage:
    """Open ``storage``: None (in memory), a journal file path, or an Optuna RDB URL."""
    if storage is None:
        return optuna.storages.InMemoryStorage()
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if not isinstance(storage, str) or not storage:
        raise StorageError(f"storage must be a file path or a URL, but got {storage!r}")
    if "://" in storage:
        url, engine_kwargs = _with_driver(normalize_url(storage)), {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}  # not minutes on a bad host
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=3 * heartbeat_interval,
                    **{_RETRY_KWARG: _RetryStale(max_retry=MAX_RETRY)},
                )
        except ImportError as exc:
            raise StorageError(
                f"storage {redact_url(storage)} needs a database driver that is not installed "
                f"({redact_text(str(exc), storage)}); for PostgreSQL: "
                "pip install 'autoclip-tuner[postgres]'"
            ) from None
        except Exception as exc:
            text = redact_text(str(exc), storage).strip()  # a driver may quote the secret
            first = text.splitlines()[0] if text else type(exc).__name__
            raise StorageError(
                f"cannot open storage {redact_url(storage)}: {first}; check the host, port, "
                "database name and credentials"
            ) from None
    return optuna.storages.JournalStorage(JournalFile(storage))


def _with_driver(url: str) -> str:
    """A bare ``postgresql://`` URL pinned to the PostgreSQL driver that is installed.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3 and earlier versions as
    psycopg2; autoclip works with either, so it names the one that can be imported.
    """
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):  # "postgres://" as Heroku and others write it
        return url
    for module in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{module}://{rest}"
    return url  # opening it raises the ImportError that names the extra to install


# Optuna 4.9 renamed the stale-trial callback; accept the older name too.
if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
    _RetryBase, _RETRY_KWARG = (
        optuna.storages.RetryHeartbeatStaleTrialCallback,
        "heartbeat_stale_trial_callback",
    )
else:  # pragma: no cover - optuna < 4.9
    _RetryBase, _RETRY_KWARG = RetryFailedTrialCallback, "failed_trial_callback"


class _RetryStale(_RetryBase):
    """Re-enqueue a trial whose heartbeat went stale, with the same parameters.

    Optuna's callback copies the dead trial's user attributes into the retry; autoclip's
    describe the dead attempt (its pid and host, partial results), and a retry carrying a dead
    pid would look dead to the same-host check in ``_fail_dead`` while it starts. The retry
    keeps the user's attributes and gets ``retry_of`` instead.
    """

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.copy(trial)
        kept = {k: v for k, v in trial.user_attrs.items() if not k.startswith(ATTR)}
        trial.user_attrs = {**kept, ATTR + "retry_of": trial.number}
        super().__call__(study, trial)
