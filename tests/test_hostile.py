"""Hostile inputs: each one fails early, with the right type or exit code and one line that
names the fix.

Library: the exception is an ``autoclip.errors`` class (so also the builtin it derives
from) and its message is one line matching the fix. CLI (in-process, ``CliRunner``): exit 2 for
usage errors (with click's Usage banner), 1 for run-time failures (one line, no banner), 130
for Ctrl-C (one line with the resume hint); never a traceback.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import autoclip
from autoclip import AGC, NormClip, QuantileClip, Task, ValueClip, ZScoreClip
from autoclip.cli import main
from autoclip.errors import ConfigError, TaskError

ROOT = Path(__file__).resolve().parent.parent
TASKS = f"{ROOT}/tests/_tasks.py"
HOSTILE = f"{ROOT}/tests/_hostile_tasks.py"


def _task(**kw) -> Task:
    base = dict(
        model_fn=lambda: nn.Linear(2, 1),
        optimizer_fn=lambda p: torch.optim.SGD(p, lr=0.1),
        loss_fn=lambda m, b: m(b).pow(2).mean(),
        batches=[torch.ones(4, 2)],
        steps=4,
    )
    return Task(**{**base, **kw})


class _Counting:
    """A model factory that counts its calls: a check that fails before any training."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> nn.Module:
        self.calls += 1
        return nn.Linear(2, 1)


def _one_line(exc: BaseException, match: str) -> None:
    text = str(exc)
    assert "\n" not in text, text
    assert __import__("re").search(match, text), text


# ---------------------------------------------------------------------------------------------
# library
# ---------------------------------------------------------------------------------------------
def _state(**over):
    sd = NormClip(1.0).state_dict()
    return {**sd, **over}


LIBRARY = [
    # clippers
    ("max_norm=0", lambda: NormClip(max_norm=0), ConfigError, r"`max_norm` must be .*> 0"),
    ("max_norm=nan", lambda: NormClip(max_norm=math.nan), ConfigError, "max_norm"),
    ("max_norm=inf", lambda: NormClip(max_norm=math.inf), ConfigError, "finite"),
    ("max_norm='1'", lambda: NormClip(max_norm="1"), ConfigError, "max_norm"),
    pytest.param("max_norm=True", lambda: NormClip(max_norm=True), ConfigError, "max_norm"),
    ("clip_value<0", lambda: ValueClip(clip_value=-1.0), ConfigError, "clip_value"),
    ("quantile=1", lambda: QuantileClip(quantile=1.0), ConfigError, r"0 < quantile < 1"),
    ("window=0", lambda: QuantileClip(window=0), ConfigError, r"`window` must be an int >= 1"),
    ("method", lambda: QuantileClip(method="fast"), ConfigError, r"`method` must be one of"),
    ("alpha=1.5", lambda: ZScoreClip(alpha=1.5), ConfigError, "alpha"),
    ("warmup_steps=0", lambda: ZScoreClip(warmup_steps=0), ConfigError, "warmup_steps"),
    ("clip_option", lambda: ZScoreClip(clip_option="x"), ConfigError, "clip_option"),
    ("clipping<0", lambda: AGC(clipping=-0.01), ConfigError, "clipping"),
    ("nonfinite", lambda: NormClip(1.0, nonfinite="ignore"), ConfigError, "nonfinite"),
    ("norm_type=0", lambda: NormClip(1.0, norm_type=0), ConfigError, "norm_type"),
    (
        "unknown clipper",
        lambda: autoclip.create_clipper("magic"),
        ConfigError,
        r"unknown clipper 'magic'; choose one of \[.*'norm'",
    ),
    (
        "misspelt parameter",
        lambda: autoclip.create_clipper("norm", max_nrom=1.0),
        ConfigError,
        r"bad parameters for clipper 'norm'.*accepts \['max_norm'",
    ),
    (
        "state of another clipper",
        lambda: NormClip(2.0).load_state_dict(NormClip(1.0).state_dict()),
        ConfigError,
        "create_clipper",
    ),
    (
        "state lacking entries",
        lambda: NormClip(1.0).load_state_dict(_state(state={})),
        ConfigError,
        "lacks the entries",
    ),
    pytest.param(
        "state dict without 'state'",
        lambda: NormClip(1.0).load_state_dict({"config": NormClip(1.0).config}),
        ConfigError,
        "state",
    ),
    pytest.param(
        "state dict that is a list",
        lambda: NormClip(1.0).load_state_dict([1, 2]),
        ConfigError,
        "dict",
    ),
    pytest.param(
        "state entry not a tensor",
        lambda: NormClip(1.0).load_state_dict(
            _state(state={k: 1 for k in NormClip(1.0).state_dict()["state"]})
        ),
        ConfigError,
        "tensor",
    ),
    # tasks
    (
        "model instance as model_fn",
        lambda: _task(model_fn=nn.Linear(2, 1)),
        TaskError,
        r"model_fn must build a fresh model.*lambda: MyModel\(\)",
    ),
    (
        "criterion as loss_fn",
        lambda: _task(loss_fn=nn.MSELoss()),
        TaskError,
        r"receives \(model, batch\).*criterion\(model\(batch\[0\]\), batch\[1\]\)",
    ),
    (
        "optimizer of other parameters",
        lambda: _task(
            optimizer_fn=lambda p: torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
        ).build(),
        TaskError,
        r"updates none of the model's parameters.*lambda params",
    ),
    ("one-shot iterator", lambda: _task(batches=iter([1])), TaskError, "DataLoader"),
    ("steps=0", lambda: _task(steps=0), TaskError, r"Task.steps must be an int >= 1"),
    ("seed='0'", lambda: _task(seed="0"), TaskError, "Task.seed must be an int"),
    ("empty target", lambda: autoclip.load_task(""), TaskError, "non-empty string"),
    (
        "not a name after the colon",
        lambda: autoclip.load_task(f"{TASKS}:1bad"),
        TaskError,
        "not a Python name",
    ),
    ("no such study", lambda: autoclip.load_task("nope"), TaskError, "no bundled study"),
    # results read back
    (
        "result that is not JSON",
        lambda: autoclip.GradTrace.from_json("{oops"),
        ConfigError,
        "cannot read the GradTrace as JSON",
    ),
    (
        "proposal with an unknown field",
        lambda: autoclip.Proposal.from_dict({"bogus": 1}),
        ConfigError,
        "unknown fields",
    ),
    (
        "result that is a list",
        lambda: autoclip.TuneResult.from_dict([]),
        ConfigError,
        "TuneResult must be a JSON object",
    ),
    (
        "trace with a text norm",
        lambda: autoclip.GradTrace.from_dict(
            {"norms": ["big"], "losses": [1.0], "layer_names": [], "layer_norms": [[]]}
        ),
        ConfigError,
        r"GradTrace.norms\[0\] must be a number",
    ),
    ("propose of a string", lambda: autoclip.propose.propose("x"), ConfigError, "GradStats"),
]


@pytest.mark.parametrize(("case", "call", "kind", "match"), LIBRARY, ids=lambda v: None)
def test_library_refuses_with_one_line(case, call, kind, match):
    with pytest.raises(kind) as err:
        call()
    assert isinstance(err.value, autoclip.AutoclipError)
    _one_line(err.value, match)


def _tune_refuses_before_the_probe(**kw):
    factory = _Counting()
    with pytest.raises(ConfigError) as err:
        autoclip.tune(_task(model_fn=factory), **{"n_trials": 2, "probe_steps": 4, **kw})
    assert factory.calls == 0, "the argument was checked only after the probe ran"
    return err.value


TUNE_ARGS = [
    ({"strategies": ["magic"]}, r"strategies.*'magic'.*choose"),
    ({"lr_range": 0}, "lr_range"),
    ({"max_instability": math.nan}, "max_instability"),
    ({"seed": -1}, "seed"),
    ({"n_trials": 0}, "n_trials"),
    ({"probe_steps": 0}, "probe_steps"),
]
TUNE_ARGS_NOW = [  # checked before the probe already before issue 14
    ({"mode": "both"}, "mode"),
    ({"weights": (1.0, 2.0)}, "weights"),
    ({"workers": 0}, "workers"),
]


@pytest.mark.parametrize(("kw", "match"), TUNE_ARGS_NOW + TUNE_ARGS)
def test_tune_checks_every_argument_before_the_probe(kw, match):
    _one_line(_tune_refuses_before_the_probe(**kw), match)


def test_suggest_with_a_criterion_names_the_loss_signature():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TaskError) as err:
        autoclip.suggest(model, opt, nn.MSELoss(), [(torch.ones(4, 2), torch.ones(4, 1))])
    _one_line(err.value, r"\(model, batch\)")


def test_probe_with_an_optimizer_of_other_parameters():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(TaskError) as err:
        autoclip.probe.probe(model, opt, lambda m, b: m(b).sum(), [torch.ones(4, 2)], steps=4)
    _one_line(err.value, "none of the model's parameters")


def test_train_with_negative_steps():
    with pytest.raises(ConfigError) as err:
        autoclip.train(_task(), steps=-3)
    _one_line(err.value, "steps")


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args), catch_exceptions=False)


USAGE, RUNTIME = 2, 1

CLI = [
    (["tune", f"{TASKS}:make_task", "--trials", "0"], USAGE, "--trials"),
    (["tune", f"{TASKS}:make_task", "--weights", "1,2"], USAGE, "three non-negative weights"),
    (["tune", f"{TASKS}:make_task", "--weights", "a,b,c"], USAGE, "three numbers like 1,0.2,0.5"),
    (["tune", f"{TASKS}:make_task", "--mode", "both"], USAGE, "--mode"),
    (["tune", f"{TASKS}:make_task", "--workers", "0"], USAGE, "--workers"),
    (["tune", f"{TASKS}:make_task", "--probe-steps", "1"], USAGE, "--probe-steps"),
    (["probe", f"{TASKS}:make_task", "--steps", "1"], USAGE, "--steps"),
    (["tune", "nope.py:make_task"], USAGE, "no such file"),
    (["tune", f"{TASKS}:not_a_task"], USAGE, "not an autoclip.Task"),
    (["probe", f"{HOSTILE}:model_instance"], USAGE, "model_fn=lambda: MyModel()"),
    (["probe", f"{HOSTILE}:criterion_as_loss"], USAGE, r"\(model, batch\)"),
    (["probe", f"{HOSTILE}:syntax_error_at_runtime"], USAGE, "make_task failed"),
    (["report", "--storage", "missing.journal"], USAGE, "run `autoclip tune` first"),
    (["studies", "run", "nope"], USAGE, "unknown studies"),
    (["probe", f"{HOSTILE}:foreign_optimizer", "-q"], RUNTIME, "none of the model's parameters"),
    (["probe", f"{HOSTILE}:nan_loss", "-q"], RUNTIME, "lower the learning rate"),
    (["tune", f"{HOSTILE}:nan_loss", "--storage", ":memory:", "-q"], RUNTIME, "non-finite"),
    (
        ["tune", f"{TASKS}:make_task", "--storage", "postgresql://u:secret@127.0.0.1:1/db"],
        RUNTIME,
        "cannot open storage",
    ),
    pytest.param(
        ["tune", f"{TASKS}:make_task", "--seed", "-1", "--storage", ":memory:"],
        USAGE,
        "--seed",
    ),
]


@pytest.mark.parametrize(("args", "code", "match"), CLI, ids=lambda v: None)
def test_cli_fails_with_one_line_and_its_exit_code(cli, args, code, match):
    res = cli(*args)
    assert res.exit_code == code, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1, res.output
    assert __import__("re").search(match, errors[0]), res.output
    assert "Traceback" not in res.output and "secret" not in res.output
    if code == RUNTIME:  # no Usage banner: the line is all there is
        assert lines == errors, res.output
    else:
        assert lines[0].startswith("Usage:"), res.output


def test_ctrl_c_prints_one_line_with_the_resume_hint(tmp_path):
    # A real process: Optuna's own warnings go to the real stderr, which CliRunner cannot see.
    journal = tmp_path / "s.journal"
    cmd = [
        sys.executable, "-m", "autoclip", "tune", f"{HOSTILE}:interrupt", "--trials", "3",
        "--probe-steps", "5", "--storage", str(journal), "--out", str(tmp_path / "out"), "-q",
    ]  # fmt: skip
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 130, out.stderr
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    assert lines == [
        f"interrupted; finished trials are saved in {journal}: rerun the same command to resume"
    ], lines
    assert journal.exists()
