"""The bundled study tasks: each builds, trains two steps, and loads by name.

Discovered through ``bundled_studies()``, so a new study module is covered without editing
this file. Two steps each keeps the whole file to a few seconds on a CPU.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from autoclip.task import Task, bundled_studies, load_task
from autoclip.training import train

STUDIES = sorted(bundled_studies())


def test_the_benchmark_tasks_are_bundled():
    assert {"digits_mlp", "lstm_adding", "char_lstm", "tiny_transformer"} <= set(STUDIES)
    assert {"sgd_transformer", "ar_forecast", "adamw_spiky"} <= set(STUDIES)
    assert {"gru_classify", "conv_digits", "deep_regression"} <= set(STUDIES)


def test_the_forecasting_series_is_on_a_scale_well_above_one():
    from autoclip_studies.ar_forecast import series

    y = series()
    assert float(y.std()) > 10 and abs(float(y.mean()) - 20) < 2


@pytest.mark.parametrize("name", STUDIES)
def test_study_has_a_one_line_description(name):
    assert bundled_studies()[name].strip()


@pytest.mark.parametrize("name", STUDIES)
def test_study_loads_by_name_and_trains_two_steps(name):
    task = load_task(name)
    assert isinstance(task, Task)
    log = train(task, steps=2)
    assert log.steps_run == 2
    assert not log.diverged, log.reason
    assert all(math.isfinite(loss) for loss in log.losses)


@pytest.mark.parametrize("name", STUDIES)
def test_study_is_reproducible_from_its_seed(name):
    module = importlib.import_module(f"autoclip_studies.{name}")
    a, b = module.make_task(seed=1), module.make_task(seed=1)
    assert a.seed == 1
    # Same seed: same initial weights and same first batch, hence the same first loss.
    assert train(a, steps=1).losses == train(b, steps=1).losses


@pytest.mark.parametrize(
    "name",
    [
        "digits_mlp",
        "lstm_adding",
        "char_lstm",
        "tiny_transformer",
        "sgd_transformer",
        "ar_forecast",
        "adamw_spiky",
        "gru_classify",
        "conv_digits",
        "deep_regression",
        "hetero_regression",
        "vae_digits",
        "resmlp_friedman",
        "mf_ratings",
        "flow_moons",
        "tcn_forecast",
    ],
)
def test_held_out_data_does_not_depend_on_the_seed(name):
    module = importlib.import_module(f"autoclip_studies.{name}")
    a, b = module.make_task(seed=0), module.make_task(seed=1)
    model = a.model_fn()  # any fixed model: both tasks must score it identically
    model.eval()
    with torch.no_grad():
        assert a.eval_fn(model) == b.eval_fn(model)
    # ...while the training data (its order, or the sequences themselves) does.
    assert not torch.equal(a.batches[0][0], b.batches[0][0])


# -- the comparison script's own logic (no training) -------------------------------------------
def test_published_autoclip_adapter_clips_exactly_as_the_reference():
    from autoclip_studies.compare import _autoclip_original
    from autoclip_studies.reference import AutoClipOriginal

    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    adapter, reference = _autoclip_original(10.0), AutoClipOriginal(10.0)
    for scale in (1.0, 5.0, 0.5, 20.0):  # growing and shrinking norms: history matters
        for m in (a, b):
            m.zero_grad()
            (scale * m(torch.ones(2, 4)).square().sum()).backward()
        result = adapter(list(a.parameters()))
        norm = reference(list(b.parameters()))
        assert result.total_norm.item() == pytest.approx(norm)
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(pa.grad, pb.grad)
    assert adapter.config == {"name": "autoclip_original", "percentile": 10.0}


def test_published_autoclip_adapter_keeps_nonfinite_steps_out_of_the_history():
    from autoclip_studies.compare import _autoclip_original

    p = torch.nn.Parameter(torch.ones(3))
    clip = _autoclip_original(10.0)
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    assert not clip([p]).finite
    assert torch.equal(p.grad, torch.zeros(3)) and clip.original.history == []


def _arm(arm, mean, std=0.01, diverged=0, n=3):
    from autoclip_studies.compare import ArmSummary

    return ArmSummary(arm, n, mean, std, diverged, n, 10.0, 0.5, 0.0, 1.0, ("norm 1",))


def test_goals_report_a_tuned_arm_outside_the_noise_as_not_met():
    from autoclip_studies.compare import goals

    arms = {
        "none": _arm("none", 2.0, diverged=2),
        "fixed 1.0": _arm("fixed 1.0", 1.0),
        "suggest": _arm("suggest", 0.9),
        "AGC 0.01": _arm("AGC 0.01", 0.5),
        "tune": _arm("tune", 0.8),
    }
    tune_line, suggest_line = goals("t", arms)
    assert "NOT met" in tune_line and "AGC 0.01" in tune_line
    assert "**met**" in suggest_line
    arms["tune"] = _arm("tune", 0.51)
    assert "**met**" in goals("t", arms)[0]


def test_goals_skip_the_suggest_goal_where_clipping_does_not_matter():
    from autoclip_studies.compare import goals

    arms = {
        "none": _arm("none", 1.0),
        "fixed 1.0": _arm("fixed 1.0", 1.001),
        "suggest": _arm("suggest", 1.01),
        "tune": _arm("tune", 1.0),
    }
    assert "does not apply" in goals("t", arms)[1]


def test_smoke_mode_shrinks_the_budget_and_writes_apart(tmp_path):
    from autoclip_studies.compare import SMOKE, parse

    args = parse(["--smoke", "--out", str(tmp_path), "--tasks", "digits_mlp"])
    assert args.seeds == SMOKE["seeds"] and args.steps == SMOKE["steps"]
    assert args.out == tmp_path / "smoke" and args.tasks == ["digits_mlp"]
