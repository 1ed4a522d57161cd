import math
from dataclasses import replace

import optuna
import pytest
import torch
from _tasks import make_task

import autoclip
from autoclip.probe import probe_task
from autoclip.propose import propose
from autoclip.search import TrialRecord, TuneResult, choose, load_result, suggest_clipper, tune
from autoclip.search._fidelity import (
    TIE,
    Plan,
    RungScore,
    level,
    nondominated_ranks,
    partial_objectives,
    promote,
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
    # One rung at step 10 of 20: a third of the bracket (3 of 8) goes on to full length.
    states = [t.state for t in result.trials]
    assert states.count("COMPLETE") == 3 and states.count("PRUNED") == 5
    assert all(t.steps_run == 10 for t in result.trials if t.state == "PRUNED")
    rec = result.proposal.recommended
    assert result.trials[0].config["name"] == rec.strategy
    assert all(result.trials[0].config[k] == pytest.approx(v) for k, v in rec.params.items())
    assert set(result.baselines) == {"no clipping", "fixed norm 1.0"}
    assert all(b.steps_run == 10 for b in result.baselines.values())  # one rung, no more
    assert result.chosen in result.pareto
    assert result.chosen.state == "COMPLETE" and result.chosen.steps_run == 20
    assert "knee" in result.rule
    # the measured suggestion (warm-up 10 + races) + 8 trials x 10 + 3 survivors x 10 more
    # + 2 baselines x 10
    probe = result.proposal.steps_spent
    assert probe > 10  # the warm-up and the measurement
    assert result.cost == {
        "probe": probe,
        "baselines": 20,
        "rung 1 (steps 1-10)": 80,
        "full length": 30,
    }
    assert result.train_steps == probe + 130


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
    builds = []

    def model_fn():  # build 1: the suggestion's model; then one per trial
        model = base.model_fn()
        builds.append(model)
        return model

    def flaky(model, batch):
        if len(builds) >= 3 and model is builds[2]:  # the second trial's model
            raise RuntimeError("flaky data loader")
        return base.loss_fn(model, batch)

    task = replace(base, model_fn=model_fn, loss_fn=flaky)
    res = tune(task, n_trials=3, probe_steps=5, baselines=False)
    states = [t.state for t in res.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 2
    failed = next(t for t in res.trials if t.state == "FAIL")
    assert "flaky data loader" in failed.reason


def test_single_mode_prunes_and_honours_the_constraint():
    res = tune(make_task(steps=30), n_trials=8, mode="single", probe_steps=10, baselines=False)
    assert [t.state for t in res.trials].count("PRUNED") == 5
    assert res.mode == "single"
    pruned = [t for t in res.trials if t.state == "PRUNED"]
    assert pruned, [t.state for t in res.trials]
    assert all(t.reason.startswith("pruned at rung") for t in pruned)
    assert res.chosen.state == "COMPLETE" and res.chosen not in pruned
    assert "instability <=" in res.rule
    assert res.chosen.values[2] <= 0.05
    done = [t for t in res.trials if t.state == "COMPLETE"]
    assert res.chosen.values[0] == min(t.values[0] for t in done if t.values[2] <= 0.05)


def _quadratic_task(lr: float, steps: int = 60, nan_after: int | None = None) -> autoclip.Task:
    """Gradient descent on 0.5 * |w - w*|^2 from |w0 - w*| = 10 (loss 50), Hessian I.

    Unclipped, each SGD step multiplies the error by (1 - lr): at lr = 3 by -2, so the loss
    grows 4x a step and passes 1000x the first loss by step 5, on any CPU. Clipped to a norm
    c, a step moves the error by at most lr * c, so it stays within 2c of the optimum once
    there and never grows: every max_norm below ~150 converges. ``nan_after`` makes the loss
    NaN after that many calls (every trial then diverges).
    """
    target = torch.tensor([1.0, -2.0, 3.0, 0.5])
    start = target + 5.0  # |w0 - w*| = 10
    calls = [0]

    def loss_fn(model, batch):
        calls[0] += 1
        loss = 0.5 * ((model.weight.squeeze(0) - target) ** 2).sum()
        return loss * math.nan if nan_after is not None and calls[0] > nan_after else loss

    def model_fn():
        m = torch.nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            m.weight.copy_(start.unsqueeze(0))
        return m

    return autoclip.Task(
        model_fn=model_fn,
        optimizer_fn=lambda p: torch.optim.SGD(p, lr=lr),
        loss_fn=loss_fn,
        batches=[None],
        seed=0,
        steps=steps,
        name="quadratic",
    )


def test_tune_on_an_exploding_task_avoids_divergence():
    res = tune(
        _quadratic_task(lr=3.0), n_trials=6, probe_steps=4, strategies=["norm"], mode="single"
    )
    assert res.baselines["no clipping"].diverged
    assert "exploded" in res.baselines["no clipping"].reason
    fixed = res.baselines["fixed norm 1.0"]
    assert not fixed.diverged and fixed.values[0] < 2.0  # within 2c of the optimum
    assert res.warning is None
    assert res.chosen is not None and not res.chosen.diverged
    done = [t for t in res.trials if t.state == "COMPLETE" and not t.diverged]
    feasible = [t for t in done if t.values[2] <= 0.05] or done
    assert res.chosen.values[0] == min(t.values[0] for t in feasible)


def test_when_every_trial_diverges_nothing_is_chosen():
    res = tune(_quadratic_task(lr=0.1, nan_after=4), n_trials=4, probe_steps=4)
    assert all(t.diverged for t in res.trials if t.state == "COMPLETE")
    assert res.chosen is None and res.pareto == ()
    assert "every one of the" in res.warning and "diverged" in res.warning
    assert res.best_config == {}
    with pytest.raises(autoclip.ConfigError, match="no configuration was chosen"):
        res.clipper()
    again = TuneResult.from_dict(__import__("json").loads(res.to_json()))
    assert again.chosen is None and again.warning == res.warning


def test_rung_plan_costs_and_keeps_a_third():
    plan = Plan.make(900)
    assert plan.rungs == (100, 300)
    assert plan.keep(9) == [3, 1]
    # 9 x 100 + 3 x 200 + 1 x 600 steps: 2.33 full runs where 9 full-length trials cost 9
    assert plan.cost(9) == 2100
    assert Plan.make(20).rungs == (10,) and Plan.make(10).rungs == ()


def test_a_plan_with_two_finalists_keeps_two_where_a_third_is_fewer():
    plan = Plan.make(900, divisors=(27, 5), finalists=2)
    assert plan.rungs == (30, 180)  # a 27th and a fifth of the run
    assert plan.keep(9) == [3, 2]  # a third of 3 is 1: two go on
    assert plan.cost(9) == 9 * 30 + 3 * 150 + 2 * 720
    assert plan.keep(5) == [2, 2] and plan.keep(3) == [1, 1]
    assert Plan.make(900, divisors=(9, 9), finalists=2).rungs == (100,)  # coinciding: one
    assert Plan.make(900, divisors=(9,), finalists=2).keep(9) == [3]  # a third is more


def test_a_rung_ranks_on_the_mean_of_the_curves_last_quarter():
    curve = [(t, float(v)) for t, v in zip(range(9, 80, 10), [8, 7, 6, 5, 4, 3, 2, 1], strict=True)]
    assert level(curve) == pytest.approx((2 + 1) / 2)  # 8 points: the last 2
    assert level([(9, math.nan)]) == math.inf and level([]) == math.inf
    score = partial_objectives(curve, clipped=0.25)
    assert score.loss == level(curve) and score.clipped == 0.25
    assert len(score.objectives) == 3


def test_a_tie_at_a_rung_goes_to_the_loosest_clipper_that_still_acts():
    best = 1.0
    inside, outside = best * (1 + TIE * 0.9), best * (1 + TIE * 1.1)
    scores = {
        0: RungScore(best, 0.5, 0.0, clipped=1.0),  # the best level: clips every step
        1: RungScore(inside, 0.5, 0.0, clipped=0.55),  # tied, acts on half the steps: first
        2: RungScore(inside, 0.5, 0.0, clipped=0.3),  # tied, acts less often than that
        3: RungScore(inside, 0.5, 0.0, clipped=0.01),  # tied, hardly clips: no clipping so far
        4: RungScore(outside, 0.5, 0.0, clipped=0.6),  # outside the tie: after every tied one
    }
    order, _ = promote(scores, 5, pareto=False)
    assert order == [1, 0, 2, 3, 4]
    # without a tie, the level decides
    apart = {0: RungScore(1.0, 0.5, 0.0, 1.0), 1: RungScore(2.0, 0.5, 0.0, 0.55)}
    assert promote(apart, 1, pareto=False)[0] == [0]


def test_rungs_promote_by_nondominated_sorting_in_pareto_mode():
    pts = {0: (1.0, 0.9, 0.0), 1: (2.0, 0.1, 0.0), 2: (1.4, 0.4, 0.0), 3: (2.0, 0.95, 0.1)}
    ranks = nondominated_ranks(__import__("numpy").asarray(list(pts.values())))
    assert list(ranks) == [0, 0, 0, 1]
    kept, _ = promote(pts, 3, pareto=True)
    assert sorted(kept) == [0, 1, 2]
    assert promote(pts, 1, pareto=False)[0] == [0]
    assert promote({0: (math.inf, 1.0, 1.0)}, 1, pareto=True)[0] == []  # diverged: never


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


def test_choice_rules_on_a_front():
    def rec(n, v):
        return TrialRecord(number=n, state="COMPLETE", config=None, values=v)

    a, b, c = rec(0, (1.0, 0.9, 0.0)), rec(1, (2.0, 0.1, 0.0)), rec(2, (1.4, 0.4, 0.0))
    front = [a, b, c]
    assert choose(front, None)[0] is c  # the knee
    assert choose(front, (1.0, 0.0, 0.0))[0] is a
    assert choose(front, (0.0, 1.0, 0.0))[0] is b
    # Two trials: a sliver of speed and instability does not outweigh a 6% lower final loss
    # (scaled by the front's range alone, each sliver would count as a whole unit).
    low, sliver = rec(3, (0.653, 0.634, 0.157)), rec(4, (0.689, 0.632, 0.153))
    assert choose([low, sliver], None)[0] is low
    # ... but a real difference in speed still trades against the loss
    fast = rec(5, (0.689, 0.3, 0.153))
    assert choose([low, fast], None)[0] is fast


def test_the_study_names_its_metrics_and_keeps_its_attributes_small(tmp_path):
    path = str(tmp_path / "s.journal")
    tune(make_task(steps=20), n_trials=3, storage=path, probe_steps=10, baselines=False)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    study = optuna.load_study(study_name="autoclip-tiny", storage=storage)
    assert study.metric_names == ["final_loss", "speed", "instability"]
    assert len(__import__("json").dumps(study.user_attrs)) < 1000  # no proposal JSON there
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(t.user_attrs["autoclip.trial"]["rungs"] for t in pruned)


def test_a_survivor_that_diverges_is_replaced_by_the_next_of_its_rung():
    """Four members, rungs at 10 and 20 of 30 steps: 2 go on past the first rung, 1 past the
    second. The best (0) diverges after the last rung: 1, the runner-up there, continues in
    its place; 2 and 3 stay paused until the bracket is settled and are then pruned."""
    import threading

    from autoclip.search._bracket import Bracket

    bracket = Bracket(4, Plan(steps=30, rungs=(10, 20)), pareto=False)
    outcome = {}

    def member(k: int) -> None:
        bracket.join(k)
        for rung, step in enumerate((9, 19)):
            if not bracket.at_rung(k, rung, [(step, 1.0 + k)]):
                outcome[k] = f"pruned at rung {rung + 1}"
                bracket.leave(k)
                return
        outcome[k] = "diverged" if k == 0 else "complete"
        bracket.leave(k, failed=k == 0)

    threads = [threading.Thread(target=member, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert outcome == {
        0: "diverged",
        1: "complete",
        2: "pruned at rung 1",
        3: "pruned at rung 1",
    }


def test_two_workers_split_the_budget_into_brackets_of_their_share(tmp_path):
    """6 trials, 2 workers: brackets of 3 (each keeps 1 to full length), whichever process
    runs them (with trials this short the coordinator may run both before its worker starts)."""
    target = f"{__import__('pathlib').Path(__file__).parent / '_tasks.py'}:make_task"
    path = str(tmp_path / "w.journal")
    res = tune(target, n_trials=6, steps=30, storage=path, probe_steps=10, workers=2)
    states = [t.state for t in res.trials]
    assert len(states) == 6 and states.count("COMPLETE") == 2 and states.count("PRUNED") == 4


def test_the_first_trials_are_a_ladder_through_the_measured_value(result):
    """By default the recommended strategy alone: its threshold on a log-spaced ladder over
    the proposal's range, the measured value first, then outward (the looser of two first)."""
    from autoclip.search._space import default_strategies, first_trials

    proposal = result.proposal
    rec = proposal.recommended
    assert default_strategies(proposal) == (rec.strategy,)
    low, high = proposal.space.range(rec.strategy)
    key = f"clip.{rec.strategy}.max_norm"
    ladder = [p[key] for p in first_trials(proposal, (rec.strategy,), 9)]
    centre = rec.params["max_norm"]
    assert ladder[0] == pytest.approx(centre) and len(set(ladder)) == 9
    assert all(low - 1e-12 <= v <= high + 1e-12 for v in ladder)
    steps = sorted(math.log(v) for v in ladder)
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    # evenly spaced on a log scale (an end may be pulled into the rounded range by a hair)
    assert max(gaps) == pytest.approx(min(gaps), rel=0.1)
    assert ladder[1] > centre > ladder[2]  # equally near: the looser first
    # the trials ran in that order, each with its rung of the ladder
    ran = [t.config["max_norm"] for t in sorted(result.trials, key=lambda t: t.number)]
    assert ran == pytest.approx([p[key] for p in first_trials(proposal, (rec.strategy,), 8)])
    # several strategies: the recommendation, then each candidate
    several = first_trials(proposal, proposal.space.strategies, 9)
    assert [p["clip.strategy"] for p in several][0] == rec.strategy
    assert len({p["clip.strategy"] for p in several}) == len(proposal.space.strategies)


def test_a_failed_probe_stops_the_worker_processes_it_started(tmp_path):
    """Local workers start before the probe (their start-up overlaps it); when the probe
    fails they are stopped too, and no half-made study is left behind."""
    import multiprocessing

    from autoclip.errors import AutoclipError

    target = f"{__import__('pathlib').Path(__file__).parent / '_bad_tasks.py'}:scalar"
    path = str(tmp_path / "w.journal")
    with pytest.raises(AutoclipError, match="scalar"):
        tune(target, n_trials=4, steps=20, storage=path, probe_steps=5, workers=2)
    assert multiprocessing.active_children() == []
    storage = autoclip.search.open_storage(path)
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == []


def test_surplus_trials_and_retried_failures_do_not_count_towards_the_budget():
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from autoclip.search._budget import _counted, _rank

    def trial(number, state, **attrs):
        t = create_trial(
            state=state,
            params={"x": 1.0},
            distributions={"x": FloatDistribution(0.0, 2.0)},
            values=[1.0] if state == TrialState.COMPLETE else None,
            user_attrs=attrs,
        )
        t.number = number
        return t

    trials = [
        trial(0, TrialState.COMPLETE),
        trial(1, TrialState.FAIL),  # retried by 4: its slot is 4's
        trial(2, TrialState.FAIL, **{"autoclip.trial": {"surplus": True}}),  # beyond the budget
        trial(3, TrialState.WAITING),
        trial(4, TrialState.WAITING, **{"autoclip.retry_of": 1}),
    ]
    assert [t.number for t in _counted(trials)] == [0, 3, 4]
    assert _rank(trials, 4) == 1  # the retry takes the slot of the trial it retries
    assert _rank(trials, 3) == 2


def test_a_surplus_trial_is_not_reported_as_a_failure_but_a_real_failure_is():
    """A worker that loses the race for the budget's last slot ends its trial quietly (no
    warning, no traceback in a worker's stderr); a trial that really fails still warns."""
    import logging

    from autoclip.search._budget import _Surplus, quiet_surplus

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.records = []

        def emit(self, record):
            self.records.append(record)

    keep = Keep()
    root = logging.getLogger("optuna")
    root.addHandler(keep)
    try:
        quiet_surplus()
        quiet_surplus()  # once only
        assert sum(type(f).__name__ == "_QuietSurplus" for f in keep.filters) == 1

        def objective(trial):
            if trial.number == 0:
                raise _Surplus("trial 0 is beyond the budget of 0 trials")
            raise ValueError("a real failure")

        study = optuna.create_study()
        study.optimize(objective, n_trials=2, catch=(Exception,))
    finally:
        root.removeHandler(keep)
    said = [r.getMessage() for r in keep.records]
    assert not any("Trial 0" in m for m in said), said
    assert any("Trial 1 failed" in m and "a real failure" in m for m in said), said
