import json

import pytest
from click.testing import CliRunner

from autoclip.cli import main

TARGET = "tests/_tasks.py:make_task"


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    runner = CliRunner()
    root = __import__("pathlib").Path(__file__).parent.parent

    def invoke(*args, **kw):
        args = [a.replace("tests/", f"{root}/tests/") for a in args]
        return runner.invoke(main, args, catch_exceptions=False, **kw)

    return invoke


@pytest.mark.parametrize(
    "command", [[], ["tune"], ["probe"], ["report"], ["studies"], ["studies", "run"]]
)
def test_every_command_has_help_with_an_example(run, command):
    res = run(*command, "--help")
    assert res.exit_code == 0
    if command:
        assert "Example" in res.output


def test_probe_prints_a_proposal_and_json_parses(run, tmp_path):
    res = run("probe", TARGET, "--steps", "10", "--quiet")
    assert res.exit_code == 0, res.output
    assert "recommend" in res.output.lower()
    res = run("probe", TARGET, "--steps", "10", "--json")
    data = json.loads(res.output)
    assert data["recommended"]["strategy"] in {"norm", "value", "quantile", "zscore", "agc"}
    assert (tmp_path / "autoclip-out" / "proposal.json").exists()


def test_probe_measures_draws_the_response_curve_and_prints_the_steps(run, tmp_path):
    res = run("probe", TARGET, "--budget", "100")
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "autoclip-out" / "proposal.json").read_text())
    assert data["response"]["chosen"] == data["recommended"]["params"]["max_norm"]
    assert f"{data['steps_spent']} optimizer steps spent" in res.output
    assert 0 < data["steps_spent"] <= 100
    assert (tmp_path / "autoclip-out" / "proposal_response.png").stat().st_size > 0
    res = run("probe", TARGET, "--budget", "0", "--json")
    assert json.loads(res.output)["response"] is None


def test_tune_writes_results_and_a_rerun_resumes(run, tmp_path):
    args = ["tune", TARGET, "--trials", "3", "--steps", "10", "--probe-steps", "5"]
    res = run(*args, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert len(data["trials"]) == 3
    assert (tmp_path / "autoclip.journal").exists()
    assert (tmp_path / "autoclip-out" / "result.json").exists()
    assert (tmp_path / "autoclip-out" / "report.md").exists()
    res = run(
        "tune", TARGET, "--trials", "4", "--steps", "10", "--probe-steps", "5", "-q", "--json"
    )
    again = json.loads(res.output)
    assert len(again["trials"]) == 4
    assert again["trials"][:3] == data["trials"]
    res = run("report")
    assert res.exit_code == 0, res.output
    assert "chosen:" in res.output and "baseline" in res.output
    res = run("report", "--json")
    assert json.loads(res.output)["study_name"] == data["study_name"]


def test_tune_prints_the_table(run):
    res = run(
        "tune",
        TARGET,
        "--trials",
        "2",
        "--steps",
        "8",
        "--probe-steps",
        "4",
        "--storage",
        ":memory:",
        "--quiet",
    )
    assert res.exit_code == 0
    res = run(
        "tune",
        TARGET,
        "--trials",
        "2",
        "--steps",
        "8",
        "--probe-steps",
        "4",
        "--storage",
        ":memory:",
    )
    assert "chosen:" in res.output and "why:" in res.output and "no clipping" in res.output


def test_environment_variables_set_storage_and_out(run, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCLIP_STORAGE", str(tmp_path / "env.journal"))
    monkeypatch.setenv("AUTOCLIP_OUT", str(tmp_path / "envout"))
    res = run("tune", TARGET, "--trials", "1", "--steps", "5", "--probe-steps", "4", "-q")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "env.journal").exists()
    assert (tmp_path / "envout" / "result.json").exists()


def test_studies_lists_the_bundled_tasks(run):
    res = run("studies")
    assert res.exit_code == 0
    assert "relu_rnn" in res.output and "digits_mlp" in res.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["tune", "nope.py:make_task"], 2, "no such file"),
        (["tune", "tests/_tasks.py:missing"], 2, "has no attribute 'missing'"),
        (["tune", "tests/_tasks.py:not_a_task"], 2, "not an autoclip.Task"),
        (["tune", "no_such_study"], 2, "no bundled study"),
        (["tune", TARGET, "--trials", "0"], 2, "--trials"),
        (["tune", TARGET, "--mode", "both"], 2, "--mode"),
        (["tune", TARGET, "--weights", "1,2"], 2, "three non-negative weights"),
        (["probe", "tests/_bad_tasks.py:scalar"], 1, "scalar"),
        (["probe", "tests/_bad_tasks.py:frozen"], 1, "no trainable parameters"),
        (["probe", "tests/_bad_tasks.py:empty"], 1, "empty"),
        (
            ["tune", TARGET, "--storage", "postgresql://u:secret@127.0.0.1:1/db"],
            1,
            "cannot open storage",
        ),
        (["report", "--storage", "missing.journal"], 2, "no storage file"),
        (["studies", "run", "nope"], 2, "unknown studies"),
    ],
)
def test_user_errors_are_one_line_with_an_exit_code(run, args, code, message):
    res = run(*args)
    assert res.exit_code == code, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert "secret" not in res.output


def test_tune_exits_1_and_chooses_nothing_when_every_trial_diverges(run, tmp_path):
    args = ["tune", "tests/_tasks.py:diverging_task", "--trials", "3", "--probe-steps", "5"]
    res = run(*args, "--storage", ":memory:")
    assert res.exit_code == 1, res.output
    assert "chosen: nothing" in res.output
    assert "WARNING: every one of the" in res.output
    data = json.loads((tmp_path / "autoclip-out" / "result.json").read_text())
    assert data["chosen"] is None and "diverged" in data["warning"]
