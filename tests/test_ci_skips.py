"""Under CI a PostgreSQL test that cannot run fails; elsewhere it skips, with its reason."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()

SERVICE_TESTS = """
import pytest

@pytest.mark.postgres
def test_marked():
    pytest.skip("no initdb on PATH")

def test_driver():
    pytest.skip("no PostgreSQL driver: pip install 'autoclip-tuner[postgres]'")

def test_cuda():
    pytest.skip("needs CUDA")
"""


def _run(pytester, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    postgres: needs PostgreSQL\n")
    pytester.makepyfile(SERVICE_TESTS)
    return pytester.runpytest("-rs")


def test_under_ci_a_skipped_service_test_fails(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, "true")
    result.assert_outcomes(failed=2, skipped=1)  # the CUDA skip is not a service: it stays
    result.stdout.fnmatch_lines(["*CI=true: a service test may not skip (no initdb on PATH)*"])


def test_outside_ci_it_skips_and_says_why(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, None)
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(["*SKIPPED*no initdb on PATH*"])
