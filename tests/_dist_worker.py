"""One rank of tests/test_clippers_distributed.py, launched by ``torchrun --nproc-per-node 2``.

For DDP and FSDP2 (``fully_shard``, DTensor gradients), and for NormClip, ValueClip,
QuantileClip and ZScoreClip, it trains a few steps with the clipper attached and compares,
every step, the clipper's total norm and the clipped gradients with the same clipper run on an
unsharded copy of the model fed the whole (global) batch. Writes ``{out}/rank{r}.json``; the
test asserts.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from autoclip import UnsupportedError, create_clipper

CLIPPERS = {
    "norm": {"max_norm": 0.5},
    "value": {"clip_value": 0.05},
    "quantile": {"quantile": 0.5, "window": 4},
    "zscore": {"warmup_steps": 3, "z_thresh": 1.5},
}
STEPS = 8


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    scale = 30.0 if step == 6 else 1.0  # a spike, after every warm-up
    return torch.randn(8, 6, generator=gen) * scale, torch.randn(8, 3, generator=gen)


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def run(mode: str, name: str, rank: int, world: int) -> dict:
    model, ref = _model(), _model()
    if mode == "ddp":
        wrapped = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        wrapped = fully_shard(model)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.05)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    clipper = create_clipper(name, **CLIPPERS[name])
    ref_clipper = create_clipper(name, **CLIPPERS[name])
    clipper.attach(opt)
    out = {"norm_rel_err": [], "grad_max_err": [], "thresholds": [], "clipped": 0}
    for step in range(STEPS):
        x, y = _global_batch(step)
        per = x.shape[0] // world
        local = slice(rank * per, (rank + 1) * per)
        opt.zero_grad()
        (wrapped(x[local]) - y[local]).square().mean().backward()
        ref_opt.zero_grad()
        (ref(x) - y).square().mean().backward()  # the mean over the global batch
        grads = []
        opt.step()  # clips (pre hook), then steps
        r = clipper.last_result_
        rr = ref_clipper(list(ref.parameters()))
        # Compare the clipped gradients (still in .grad after the step) with the reference.
        for p, q in zip(wrapped.parameters(), ref.parameters(), strict=True):
            grads.append((_full(p.grad) - q.grad).abs().max().item())
        ref_opt.step()
        out["norm_rel_err"].append(abs(r.total_norm.item() / rr.total_norm.item() - 1))
        out["grad_max_err"].append(max(grads))
        out["thresholds"].append(r.threshold.item())
        out["clipped"] += int(r.clipped.item())
        out["ref_clipped"] = out.get("ref_clipped", 0) + int(rr.clipped.item())
        out["is_dtensor"] = type(next(wrapped.parameters()).grad).__name__ == "DTensor"
    out["state"] = {k: v.tolist() for k, v in clipper.state_dict()["state"].items()}
    return out


def main() -> None:
    torch.set_num_threads(1)
    out_dir = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for mode in ("ddp", "fsdp2"):
        for name in CLIPPERS:
            results[f"{mode}-{name}"] = run(mode, name, rank, world)
    # A clipper that cannot measure sharded gradients says so.
    from torch.distributed.fsdp import fully_shard

    model = fully_shard(_model())
    model(torch.randn(4, 6)).sum().backward()
    try:
        create_clipper("agc")(list(model.parameters()))
        results["agc_error"] = None
    except UnsupportedError as exc:
        results["agc_error"] = str(exc)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    # Both ranks reach the end before either tears gloo down: a rank that exits while the
    # other still talks to it can abort ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
