"""Clippers across processes: two gloo ranks under ``torchrun`` (CPU), with DDP and with FSDP2
``fully_shard`` (DTensor gradients). Each rank's clipper must see the global norm of the
unsharded model fed the global batch, clip to the same gradients, and hold the same threshold
and adaptive state as the other rank. The ranks run tests/_dist_worker.py (~10 s in all)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_dist_worker.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--standalone", str(WORKER), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


NAMES = ("norm", "value", "quantile", "zscore")
CASES = [f"{mode}-{name}" for mode in ("ddp", "fsdp2") for name in NAMES]


@pytest.mark.parametrize("case", CASES)
def test_total_norm_and_clipped_gradients_equal_the_unsharded_model(ranks, case):
    for rank in ranks:
        r = rank[case]
        assert max(r["norm_rel_err"]) < 1e-5
        assert max(r["grad_max_err"]) < 1e-6  # gradients are O(0.1): 1e-5 relative
        assert r["clipped"] == r["ref_clipped"] > 0  # the comparison covers clipped steps
        assert r["is_dtensor"] == case.startswith("fsdp2")


@pytest.mark.parametrize("case", CASES)
def test_every_rank_has_the_same_thresholds_and_state(ranks, case):
    a, b = (rank[case] for rank in ranks)
    assert a["thresholds"] == b["thresholds"]
    assert a["state"] == b["state"]


def test_an_unsupported_clipper_says_so_on_sharded_gradients(ranks):
    for rank in ranks:
        assert "AGC does not support DTensor" in rank["agc_error"]
