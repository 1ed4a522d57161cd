import math
from dataclasses import replace

import optuna
import pytest
from _tasks import make_exploding_task, make_task

import autoclip
from autoclip.probe import probe_task
from autoclip.propose import propose
from autoclip.search import (
    TrialRecord,
    TuneResult,
    choose,
    load_result,
    pareto_front,
    suggest_clipper,
    tune,
)
from autoclip.stats import compute_stats

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def result():
    return tune(make_task(steps=20), n_trials=8, probe_steps=10)


def _params_key(p):
    return tuple(sorted((k, round(v, 9) if isinstance(v, float) else v) for k, v in p.items()))


def test_tune_runs_the_budget_and_enqueues_the_proposal_first(result):
    assert len(result.trials) == 8
    assert all(t.state == "COMPLETE" for t in result.trials)
    first = [t.config["name"] for t in result.trials[: len(result.proposal.candidates)]]
    assert first == [c.strategy for c in result.proposal.candidates][: len(first)]
    assert set(result.baselines) == {"no clipping", "fixed norm 1.0"}
    assert result.chosen in result.pareto
    assert "knee" in result.rule
    # probe + 8 trials + 2 baselines, each 20 steps
    assert result.train_steps == 10 + 8 * 20 + 2 * 20


def test_result_clipper_is_ready_and_round_trips(result):
    clipper = result.clipper()
    assert clipper.config == {**result.best_config}
    again = TuneResult.from_dict(__import__("json").loads(result.to_json()))
    assert again.chosen == result.chosen
    assert again.pareto == result.pareto
    assert again.proposal.recommended == result.proposal.recommended


def test_tune_is_deterministic_under_a_fixed_seed(result):
    again = tune(make_task(steps=20), n_trials=8, probe_steps=10)
    assert [t.config for t in again.trials] == [t.config for t in result.trials]
    assert [t.values for t in again.trials] == [t.values for t in result.trials]


def test_file_storage_resumes_and_respects_the_total(tmp_path):
    path = str(tmp_path / "study.journal")
    first = tune(make_task(steps=10), n_trials=3, storage=path, probe_steps=8, baselines=False)
    assert len(first.trials) == 3
    second = tune(make_task(steps=10), n_trials=5, storage=path, probe_steps=8, baselines=False)
    assert len(second.trials) == 5
    assert [t.config for t in second.trials[:3]] == [t.config for t in first.trials]
    assert second.proposal == first.proposal  # stored once by the coordinator, not re-probed
    # A rerun with the same total runs nothing more.
    third = tune(make_task(steps=10), n_trials=5, storage=path, probe_steps=8, baselines=False)
    assert len(third.trials) == 5
    loaded = load_result(path)
    assert [t.number for t in loaded.trials] == [t.number for t in third.trials]


def test_a_study_with_other_settings_is_refused(tmp_path):
    path = str(tmp_path / "study.journal")
    tune(make_task(steps=5), n_trials=1, storage=path, probe_steps=4, baselines=False)
    with pytest.raises(autoclip.StorageError, match="different search"):
        tune(make_task(steps=5), n_trials=1, storage=path, mode="single", baselines=False)


def test_a_nan_trial_is_recorded_and_the_study_goes_on():
    base = make_task(steps=20)

    def nan_after_a_few_steps(model, batch, calls=[0]):  # noqa: B006 - a call counter
        calls[0] += 1
        loss = base.loss_fn(model, batch)
        return loss * math.nan if calls[0] % 20 > 12 else loss

    task = replace(base, loss_fn=nan_after_a_few_steps)
    res = tune(task, n_trials=4, probe_steps=5, baselines=False)
    assert len(res.trials) == 4
    diverged = [t for t in res.trials if t.diverged]
    assert diverged, "the NaN loss must show up as diverged trials"
    assert all("non-finite loss" in t.reason for t in diverged)
    assert all(t.values[2] == 1.0 for t in diverged)  # instability of a diverged run


def test_a_failing_trial_does_not_stop_the_study():
    base = make_task(steps=10)
    state = {"calls": 0}

    def flaky(model, batch):
        state["calls"] += 1
        if 30 <= state["calls"] < 35:  # inside the second trial (probe: 5, trial: 10 calls)
            raise RuntimeError("flaky data loader")
        return base.loss_fn(model, batch)

    res = tune(replace(base, loss_fn=flaky), n_trials=3, probe_steps=5, baselines=False)
    states = [t.state for t in res.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 2
    failed = next(t for t in res.trials if t.state == "FAIL")
    assert "flaky data loader" in failed.reason


def test_single_mode_prunes_and_honours_the_constraint():
    # 10 trials: with the median pruner's 3 start-up trials, sampler seeds 0-4 each prune 1-3
    res = tune(make_task(steps=20), n_trials=10, mode="single", probe_steps=10, baselines=False)
    assert res.mode == "single"
    pruned = [t for t in res.trials if t.state == "PRUNED"]
    assert pruned, [t.state for t in res.trials]
    assert all(t.reason.startswith("pruned at step") for t in pruned)
    assert res.chosen.state == "COMPLETE" and res.chosen not in pruned
    assert "instability <=" in res.rule
    assert res.chosen.values[2] <= 0.05
    done = [t for t in res.trials if t.state == "COMPLETE"]
    assert res.chosen.values[0] == min(t.values[0] for t in done if t.values[2] <= 0.05)


def test_tune_on_an_exploding_task_avoids_divergence():
    res = tune(make_exploding_task(steps=60), n_trials=6, probe_steps=10)
    assert res.baselines["no clipping"].diverged
    assert not res.chosen.diverged


def test_suggest_clipper_inside_a_user_study():
    task = make_task(steps=10)
    proposal = propose(compute_stats(probe_task(task, steps=10)))

    def objective(trial):
        clipper = suggest_clipper(trial, proposal, strategies=["norm", "zscore"])
        lr = trial.suggest_float("lr", 0.01, 0.1, log=True)
        assert isinstance(clipper, autoclip.BaseClipper)
        del lr
        return autoclip.objectives.final_loss(autoclip.train(task, clipper))

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=6)
    for t in study.trials:
        strategy = t.params["clip.strategy"]
        assert strategy in ("norm", "zscore")
        key = "clip.norm.max_norm" if strategy == "norm" else "clip.zscore.z_thresh"
        low, high = proposal.space.norm if strategy == "norm" else proposal.space.z_thresh
        assert low <= t.params[key] <= high
    with pytest.raises(autoclip.ConfigError, match="cannot search"):
        suggest_clipper(optuna.create_study().ask(), proposal, strategies=["bogus"])


def test_bad_arguments_are_refused_with_the_rule():
    with pytest.raises(autoclip.ConfigError, match="mode"):
        tune(make_task(), n_trials=1, mode="both")
    with pytest.raises(autoclip.ConfigError, match="target string"):
        tune(make_task(), n_trials=2, workers=2)
    with pytest.raises(autoclip.ConfigError, match="weights"):
        tune(make_task(), n_trials=1, weights=(1, 2))
    with pytest.raises(autoclip.StorageError, match="folder does not exist"):
        tune(make_task(), n_trials=1, storage="/no/such/dir/x.journal")


def test_pareto_front_and_choice_rules():
    def rec(n, v):
        return TrialRecord(number=n, state="COMPLETE", config=None, values=v)

    a, b, c, d = (
        rec(0, (1.0, 0.9, 0.0)),
        rec(1, (2.0, 0.1, 0.0)),
        rec(2, (1.4, 0.4, 0.0)),
        rec(3, (2.0, 0.95, 0.1)),
    )
    front = pareto_front([a, b, c, d])
    assert front == [a, b, c]
    assert choose(front, None)[0] is c  # the knee
    assert choose(front, (1.0, 0.0, 0.0))[0] is a
    assert choose(front, (0.0, 1.0, 0.0))[0] is b
