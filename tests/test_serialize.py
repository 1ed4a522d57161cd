"""The one strict-JSON encoding: every output parses under a strict parser and round-trips."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from autoclip import serialize
from autoclip.cli import main
from autoclip.errors import ConfigError
from autoclip.stats import Percentiles

ROOT = __import__("pathlib").Path(__file__).parent.parent
TARGET = f"{ROOT}/tests/_tasks.py:make_task"


def strict_loads(text: str):
    """json.loads that refuses the NaN/Infinity tokens strict parsers (jq, browsers) reject."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_strict_loads_really_refuses_bare_tokens():
    with pytest.raises(ValueError, match="NaN"):
        strict_loads('{"x": NaN}')
    with pytest.raises(ValueError, match="Infinity"):
        strict_loads("[-Infinity]")


@dataclass(frozen=True)
class _Row:
    x: float
    lr: float | None = None
    steps: tuple[int, ...] = ()
    inner: Percentiles | None = None
    extra: dict | None = None


def test_round_trip_is_exact_for_every_non_finite_value():
    p = Percentiles(1.0, 2.0, math.inf, -math.inf, math.nan, 3.0)
    row = _Row(x=math.nan, lr=None, steps=(1, 2), inner=p, extra={"a": [math.inf]})
    text = serialize.dumps(row)
    strict_loads(text)
    assert '"NaN"' in text and '"Infinity"' in text and '"-Infinity"' in text
    back = serialize.loads(text, _Row)
    assert math.isnan(back.x) and back.lr is None and back.steps == (1, 2)
    assert back.inner.p90 == math.inf and back.inner.p95 == -math.inf
    assert math.isnan(back.inner.p99) and back.extra == {"a": [math.inf]}
    assert serialize.dumps(back) == text


@pytest.mark.parametrize(
    "data, match",
    [
        ([1, 2], "must be a JSON object"),
        ({"x": 1.0, "bogus": 1}, "unknown fields"),
        ({}, "missing the fields"),
        ({"x": "fast"}, r"_Row\.x must be a number"),
        ({"x": True}, r"_Row\.x must be a number"),
        ({"x": 1.0, "steps": [1, "two"]}, r"_Row\.steps\[1\] must be int"),
        ({"x": 1.0, "inner": {"p50": 1}}, r"_Row\.inner is missing"),
    ],
)
def test_malformed_input_is_one_config_error_naming_the_field(data, match):
    with pytest.raises(ConfigError, match=match) as err:
        serialize.from_plain(_Row, data)
    assert "\n" not in str(err.value)


def test_not_json_at_all_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot read the _Row as JSON"):
        serialize.loads("{not json", _Row)


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *a: runner.invoke(main, list(a), catch_exceptions=False)


def test_probe_json_is_strict_and_encodes_non_finite_values(run, tmp_path):
    res = run("probe", TARGET, "--steps", "12", "--json")
    assert res.exit_code == 0, res.output
    data = strict_loads(res.output)
    # this small regression has no spikes, so the spike size is undefined: encoded, not bare
    assert data["stats"]["spike_factor"] == "NaN"
    strict_loads((tmp_path / "autoclip-out" / "proposal.json").read_text())


def test_tune_json_and_result_json_are_strict(run, tmp_path):
    res = run("tune", TARGET, "--trials", "2", "--steps", "6", "--probe-steps", "5", "--json", "-q")
    assert res.exit_code == 0, res.output
    data = strict_loads(res.output)
    assert data["proposal"]["stats"]["spike_factor"] == "NaN"
    stored = strict_loads((tmp_path / "autoclip-out" / "result.json").read_text())
    assert stored["study_name"] == data["study_name"]
    res = run("report", "--json")
    assert res.exit_code == 0, res.output
    strict_loads(res.output)
