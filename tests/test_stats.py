"""Gradient statistics on synthetic traces whose answers are known, and on the exploding RNN."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoclip.errors import ConfigError
from autoclip.probe import GradTrace, probe_task
from autoclip.stats import GradStats, Percentiles, compute_stats


def make_trace(
    steps=200,
    level=1.0,
    noise=0.2,
    transient=0,
    transient_factor=30.0,
    spikes=(),
    spike_factor=40.0,
    drift=1.0,
    nonfinite=(),
    seed=0,
    values=None,
):
    """A two-layer trace: ``body`` carries the ordinary norm, ``rec`` carries the spikes.

    The level starts ``transient_factor`` higher and decays over ``transient`` steps, then
    moves by ``drift`` (a factor) linearly in log over the rest; spikes add to ``rec`` only.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    log_level = np.log(level) + np.log(drift) * t / steps
    if transient:
        log_level = log_level + np.log(transient_factor) * np.clip(1 - t / transient, 0, 1)
    body = np.exp(log_level + noise * rng.standard_normal(steps))
    rec = 0.3 * np.exp(log_level + noise * rng.standard_normal(steps))
    for s in spikes:
        rec[s] = spike_factor * body[s]
    norms = np.sqrt(body**2 + rec**2)
    losses = np.linspace(2.0, 1.0, steps)
    for s in nonfinite:
        norms[s] = math.inf
        body[s] = rec[s] = math.inf
    sample_steps = tuple(range(9, steps, max(1, steps // 10)))[:10]
    if values is None:
        values = [0.01] * 100
    return GradTrace(
        norms=tuple(norms.tolist()),
        losses=tuple(losses.tolist()),
        layer_names=("body.weight", "rec.weight"),
        layer_norms=tuple(zip(body.tolist(), rec.tolist(), strict=True)),
        layer_numels=(100, 100),
        weight_norms=(10.0, 5.0),
        value_sample=tuple(float(v) for _ in sample_steps for v in values),
        sample_steps=sample_steps,
        value_counts=(len(values),) * len(sample_steps),
        agc_ratio_sample=tuple(0.01 * (i + 1) for _ in sample_steps for i in range(10)),
        agc_ratio_counts=(10,) * len(sample_steps),
        planned_steps=steps,
        optimizer="SGD",
        lr=0.1,
    )


def test_percentiles_match_numpy_over_finite_steps():
    trace = make_trace(nonfinite=(50, 51))
    st = compute_stats(trace)
    finite = np.array([x for x in trace.norms if math.isfinite(x)])
    for name, q in (("p50", 50), ("p75", 75), ("p90", 90), ("p95", 95), ("p99", 99)):
        assert getattr(st, name) == pytest.approx(np.percentile(finite, q))
    assert st.max == finite.max() and st.median == pytest.approx(np.median(finite))
    assert st.mad == pytest.approx(np.median(np.abs(finite - np.median(finite))))
    assert st.nonfinite_steps == (50, 51)
    assert {50, 51} <= set(st.spike_steps)  # non-finite steps count as spikes


def test_spikes_are_found_where_they_are_and_attributed_to_their_layer():
    spikes = (60, 97, 130, 171)
    st = compute_stats(make_trace(spikes=spikes))
    assert st.spike_steps == spikes
    assert st.spike_rate == pytest.approx(len(spikes) / 200)
    assert st.regimes == 2
    assert st.spike_layers[0][0] == "rec.weight" and st.spike_layers[0][1] > 0.9
    assert st.spike_factor == pytest.approx(40.0, rel=0.3)
    # ordinary steps are carried mostly by the body layer
    assert st.top_layers[0][0] == "body.weight"
    # the normal regime excludes the spikes
    assert st.normal.max < 3.0 < st.max


@pytest.mark.parametrize("seed", range(5))
def test_no_spikes_in_plain_lognormal_noise(seed):
    st = compute_stats(make_trace(noise=0.3, seed=seed))
    assert st.spike_steps == () and st.spike_layers == ()
    assert math.isnan(st.spike_factor)
    assert not st.drifting


def test_a_short_trace_uses_the_robust_rule():
    st = compute_stats(make_trace(steps=15, spikes=(9,)))
    assert st.spike_steps == (9,) and st.regimes == 1


def test_the_startup_transient_is_cut_off():
    st = compute_stats(make_trace(transient=40, transient_factor=50.0))
    assert 30 <= st.settle_step <= 60
    assert st.trend < 0 and st.trend_ratio < 0.3  # falling over the warm-up...
    assert st.settled.p99 < 3.0 < st.p99  # ...but the settled part does not see the fall
    assert st.normal.p50 == pytest.approx(1.04, rel=0.15)
    assert not st.drifting
    assert all(x < 3.0 for x in st.settled_norms)


def test_a_drifting_level_is_flagged():
    st = compute_stats(make_trace(drift=8.0))
    assert st.drifting
    # the fitted level moves as the drift does over the settled part
    assert st.settled_change == pytest.approx(8.0 ** ((199 - st.settle_step) / 200), rel=0.2)
    assert st.trend == pytest.approx(math.log(8.0) / 200, rel=0.2)
    steady = compute_stats(make_trace(drift=1.3))
    assert not steady.drifting


def test_values_and_agc_ratios_come_from_the_settled_part():
    trace = make_trace(transient=60, transient_factor=50.0)
    # early sampled steps (before the norms settle) have |g| 100x larger
    counts = trace.value_counts
    values = []
    for step in trace.sample_steps:
        values += [1.0 if step < 60 else 0.01] * counts[0]
    trace = GradTrace(**{**trace.__dict__, "value_sample": tuple(values)})
    st = compute_stats(trace)
    assert st.settle_step >= 50
    assert st.values.max == pytest.approx(0.01)
    assert st.agc_ratios.p50 == pytest.approx(np.median([0.01 * (i + 1) for i in range(10)]))


def test_layer_shares_add_up_and_ratios_use_weight_norms():
    st = compute_stats(make_trace())
    assert sum(st.layer_share) == pytest.approx(1.0)
    # body ~ 1, rec ~ 0.3 of it: shares of the squared norm ~ 1 : 0.09
    assert st.layer_share[0] == pytest.approx(1 / 1.09, rel=0.05)
    assert st.layer_ratio[0] == pytest.approx(1.0 / 10.0, rel=0.2)
    assert st.layer_spike_share == (0.0, 0.0)


def test_json_round_trip_with_nan_and_inf():
    st = compute_stats(make_trace(nonfinite=(10,)))
    assert math.isnan(st.spike_factor) or st.spike_factor > 0
    text = st.to_json()
    assert "Infinity" in text  # the non-finite norm, encoded as strict JSON allows
    back = GradStats.from_json(text)
    assert back.to_json() == text
    assert isinstance(back.settled, Percentiles) and back.norms[10] == math.inf
    assert GradStats.from_dict(st.to_dict()).to_json() == text
    with pytest.raises(ConfigError, match="unknown fields"):
        GradStats.from_dict({**st.to_dict(), "bogus": 1})


def test_summary_names_the_spikes_and_their_layer():
    st = compute_stats(make_trace(spikes=(60, 130)))
    text = st.summary()
    assert "60, 130" in text and "rec.weight" in text and "p99" in text
    assert str(st) == text
    calm = compute_stats(make_trace()).summary()
    assert "spikes        none" in calm


def test_bad_input():
    with pytest.raises(ConfigError, match="GradTrace"):
        compute_stats([1.0, 2.0])
    dead = GradTrace(
        norms=(math.nan,) * 3, losses=(1.0,) * 3, layer_names=(), layer_norms=((),) * 3
    )
    with pytest.raises(ConfigError, match="no finite"):
        compute_stats(dead)


def test_relu_rnn_probe_reports_spikes_from_the_recurrent_weights():
    # The acceptance case: the exploding RNN's warm-up shows spikes, and the recurrent matrix
    # is where their excess comes from.
    from autoclip_studies.relu_rnn import make_task

    st = compute_stats(probe_task(make_task(0), steps=100))
    assert st.spike_steps, st.summary()
    assert st.spike_layers[0][0] == "rnn.weight_hh_l0", st.summary()
    assert st.spike_factor > 5


def test_a_warm_up_stopped_at_step_8_cites_no_nan_statistic():
    # Stopped before the first sampled step: no |g| elements and no AGC ratios were taken.
    trace = make_trace(steps=8)
    trace = GradTrace(
        **{
            **trace.to_dict(),
            "value_sample": (),
            "sample_steps": (),
            "value_counts": (),
            "agc_ratio_sample": (),
            "agc_ratio_counts": (),
            "stopped_early": True,
            "diverged": True,
            "reason": "the loss became non-finite (nan) at step 8; the model diverged",
        }
    )
    st = compute_stats(trace)
    assert math.isnan(st.values.p99) and math.isnan(st.agc_ratios.p90)
    text = st.summary()
    assert "nan" not in text.lower().replace("non-finite (nan)", "")
    assert "|g| values    not measured" in text and "AGC ratios    not measured" in text
    from autoclip import report

    md = report.stats_markdown(st)
    assert "abs(g) elements" not in md and "AGC unit ratios" not in md
