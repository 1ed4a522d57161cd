"""Mixed precision end to end: autocast + GradScaler + a fused optimizer, through
``autoclip.suggest`` and ``attach``.

The deep ReLU MLP of ``suggest_before_training.py`` (scikit-learn's digits, no
normalisation), trained the way mixed-precision training usually runs: the forward pass under
``torch.autocast`` (bfloat16 on a CPU, float16 on a GPU), the loss scaled by
``torch.amp.GradScaler``, and a *fused* AdamW, to which the scaler hands the gradients still
scaled (the clipper reads the scale and measures the true norms). ``suggest`` probes with the
same scaler and restores it; the attached clipper then clips every step.

    python examples/amp_training.py                     # prints the run
    python examples/amp_training.py --out studies/results/amp_example.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys

import torch
from sklearn.datasets import load_digits
from torch import nn

import autoclip

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", help="also write the output as Markdown to this file")
parser.add_argument("--epochs", type=int, default=8)
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"
amp_dtype = torch.float16 if device == "cuda" else torch.bfloat16

# --- your usual setup -----------------------------------------------------------------------
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32)
x = (x - x.mean(0)) / (x.std(0) + 1e-6)
y = torch.tensor(digits.target)
batches = [(x[i : i + 64].to(device), y[i : i + 64].to(device)) for i in range(0, 1536, 64)]
x_test, y_test = x[1536:].to(device), y[1536:].to(device)

layers = [nn.Linear(64, 128), nn.ReLU()]
for _ in range(6):
    layers += [nn.Linear(128, 128), nn.ReLU()]
model = nn.Sequential(*layers, nn.Linear(128, 10)).to(device)
for m in model:
    if isinstance(m, nn.Linear):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.zeros_(m.bias)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, fused=True)
scaler = torch.amp.GradScaler(device)  # works on CPU in torch >= 2.3


def loss_fn(model, batch):
    inputs, targets = batch
    with torch.autocast(device, dtype=amp_dtype):
        logits = model(inputs)
    return nn.functional.cross_entropy(logits.float(), targets)


lines: list[str] = []


def say(text: str = "") -> None:
    print(text)
    lines.append(text)


# --- the one call: probe with the same scaler (restored afterwards) --------------------------
scale_before = scaler.get_scale()
proposal = autoclip.suggest(model, optimizer, loss_fn, batches, steps=60, scaler=scaler)
assert scaler.get_scale() == scale_before  # the probe restored the scaler
say(f"device {device}, autocast {amp_dtype}, GradScaler scale {scale_before:g}, fused AdamW")
say()
say(proposal.summary())
clipper = proposal.clipper()
clipper.attach(optimizer)

# --- your usual mixed-precision loop, unchanged ----------------------------------------------
say()
say("epoch  mean loss  test accuracy  mean pre-clip norm  steps clipped")
for epoch in range(args.epochs):
    total_loss, norms, clipped_before = 0.0, [], clipper.clipped.item()
    for batch in batches:
        optimizer.zero_grad()
        loss = loss_fn(model, batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # unscales (or hands the scale to the fused step), clips, steps
        scaler.update()
        total_loss += loss.item()
        norms.append(clipper.last_result_.total_norm.item())
    with torch.no_grad(), torch.autocast(device, dtype=amp_dtype):
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    clipped = clipper.clipped.item() - clipped_before
    say(
        f"{epoch + 1:>5}  {total_loss / len(batches):>9.4f}  {accuracy:>13.3f}  "
        f"{sum(norms) / len(norms):>18.3f}  {clipped:>6} / {len(batches)}"
    )

# One more step, checked: the fused step got gradients x scale; the clipper measured them /scale.
optimizer.zero_grad()
scaler.scale(loss_fn(model, batches[0])).backward()
scale = scaler.get_scale()
at_scale = autoclip.functional.total_norm([p.grad for p in model.parameters()]).item()
scaler.step(optimizer)
scaler.update()
measured = clipper.last_result_.total_norm.item()
say()
say(
    f"clipper: {clipper.steps.item()} steps, {clipper.clipped.item()} clipped, "
    f"{clipper.skipped.item()} skipped; the scaler's scale is now {scaler.get_scale():g}"
)
say(
    f"last step: norm of the gradients as the fused step got them {at_scale:.5g} (scale "
    f"{scale:g}); the clipper measured {measured:.5g} = {at_scale / scale:.5g} unscaled"
)

if args.out:
    import numpy

    header = [
        "# Mixed-precision training through suggest + attach",
        "",
        f"Command: `python examples/amp_training.py --out {args.out}`",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, numpy {numpy.__version__}, "
        f"Python {platform.python_version()}",
        f"- machine: {platform.platform()}, 1 torch thread",
        "",
        "```",
    ]
    with open(args.out, "w") as f:
        f.write("\n".join(header + lines + ["```", ""]))
    print(f"wrote {args.out}", file=sys.stderr)
