"""Shared test settings."""

import os

import pytest
import torch

# One intra-op thread: the tests' tensors are tiny, and on a busy 2-core machine a second
# thread makes small ops wait on each other (seconds instead of milliseconds).
torch.set_num_threads(1)

# Under CI (CI=true, as .ci/run sets it) a service test that cannot run is a failure, not a
# skip: otherwise a CI machine without PostgreSQL stays green without ever testing it.
SERVICE_WORDS = ("postgresql", "psycopg")


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and _under_ci()) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if item.get_closest_marker("postgres") or any(w in reason.lower() for w in SERVICE_WORDS):
        report.outcome = "failed"
        report.longrepr = f"CI=true: a service test may not skip ({reason})"
