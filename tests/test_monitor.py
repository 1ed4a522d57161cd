"""ClipMonitor: device-side sums of ClipResults, numbers once per interval."""

import math

import pytest
import torch

import autoclip
from autoclip.clippers import ClipResult
from autoclip.errors import ConfigError
from autoclip.monitor import METRICS, ClipMonitor


def result(norm, threshold=1.0):
    norm = torch.tensor(float(norm))
    finite = norm < math.inf
    return ClipResult(norm, torch.tensor(threshold), (norm > threshold) & finite, finite)


def test_an_interval_reports_mean_max_last_threshold_and_fractions():
    m = ClipMonitor()
    for norm, thr in [(0.5, 1.0), (3.0, 2.0), (math.inf, 2.0), (1.5, 4.0)]:
        assert m.update(result(norm, thr)) is None  # every=None: never reports by itself
    out = m.compute()
    assert list(out) == [f"autoclip/{k}" for k in METRICS]
    # The skipped (non-finite) step is left out of the norms and counted as skipped.
    assert out["autoclip/grad_norm"] == pytest.approx((0.5 + 3.0 + 1.5) / 3)
    assert out["autoclip/grad_norm_max"] == pytest.approx(3.0)
    assert out["autoclip/threshold"] == pytest.approx(4.0)  # the last step's
    assert out["autoclip/clipped_frac"] == pytest.approx(1 / 4)
    assert out["autoclip/skipped_frac"] == pytest.approx(1 / 4)


def test_every_writes_to_a_summary_writer_and_starts_a_new_interval():
    class Writer:  # the part of torch.utils.tensorboard.SummaryWriter it uses
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, step):
            self.calls.append((tag, value, step))

    w = Writer()
    m = ClipMonitor(every=2, sink=w, prefix="clip/")
    assert m.update(result(1.0), step=10) is None
    first = m.update(result(3.0), step=11)
    assert first["clip/grad_norm"] == pytest.approx(2.0)
    assert {(t, s) for t, _, s in w.calls} == {(f"clip/{k}", 11) for k in METRICS}
    m.update(result(5.0), step=12)
    second = m.update(result(7.0), step=13)
    assert second["clip/grad_norm"] == pytest.approx(6.0)  # only the second interval
    assert second["clip/grad_norm_max"] == pytest.approx(7.0)


def test_a_callable_sink_gets_the_dict_and_the_call_count_as_step():
    seen = []
    m = ClipMonitor(every=3, sink=lambda metrics, step: seen.append((step, metrics)))
    for norm in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        m.update(result(norm, threshold=10.0))
    assert [s for s, _ in seen] == [3, 6]
    assert seen[1][1]["autoclip/grad_norm"] == pytest.approx(5.0)
    assert seen[1][1]["autoclip/clipped_frac"] == 0.0


def test_all_skipped_and_empty_intervals_report_nan_norms():
    m = ClipMonitor()
    assert math.isnan(m.compute()["autoclip/grad_norm"])
    m.update(result(math.nan))
    out = m.compute()
    assert math.isnan(out["autoclip/grad_norm"]) and out["autoclip/skipped_frac"] == 1.0


def test_with_a_real_clipper_the_norm_is_torchs_pre_clip_norm():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    clipper = autoclip.create_clipper("norm", max_norm=0.1)
    m = ClipMonitor()
    norms = []
    for _ in range(3):
        w.grad = torch.randn(5, 3)
        norms.append(torch.linalg.vector_norm(w.grad).item())
        m.update(clipper([w]))
    out = m.compute()
    assert out["autoclip/grad_norm"] == pytest.approx(sum(norms) / 3, rel=1e-5)
    assert out["autoclip/threshold"] == pytest.approx(0.1)
    assert out["autoclip/clipped_frac"] == 1.0


@pytest.mark.parametrize("bad", [dict(every=0), dict(every=1.5), dict(sink=3)])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ConfigError, match="every|sink"):
        ClipMonitor(**bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host syncs")
def test_update_never_syncs_with_the_device():
    w = torch.nn.Parameter(torch.randn(64, 64, device="cuda"))
    clipper = autoclip.create_clipper("norm", max_norm=0.1)
    results = []
    for _ in range(6):  # the clipper's own syncs are not this test's business
        w.grad = torch.randn_like(w)
        results.append(clipper([w]))
    m = ClipMonitor()
    m.update(results[0])  # the first call allocates the accumulator
    torch.cuda.set_sync_debug_mode("error")
    try:
        for r in results[1:]:
            m.update(r)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert m.compute()["autoclip/clipped_frac"] == 1.0
