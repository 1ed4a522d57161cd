"""autoclip inside a Lightning Trainer: one callback measures, clips, logs and checkpoints.

``AutoClipCallback(None)`` first runs ``autoclip.suggest`` on the trainer's own module,
optimizer and training batches (and restores them), then clips every optimizer step with the
recommended clipper; pass a clipper instead to skip the suggestion. What it logged is read
back from Lightning's CSV logger. A deep ReLU MLP on scikit-learn's digits; about ten seconds
on a CPU:

    python examples/lightning_callback.py
"""

import csv
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn

from autoclip.integrations.lightning import AutoClipCallback

torch.set_num_threads(1)
pl.seed_everything(0, verbose=False)

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32)
x = (x - x.mean(0)) / (x.std(0) + 1e-6)
data = torch.utils.data.TensorDataset(x[:1536], torch.tensor(digits.target[:1536]))
loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)


class DeepMLP(pl.LightningModule):
    def __init__(self):
        super().__init__()
        layers = [nn.Linear(64, 128), nn.ReLU()]
        for _ in range(6):
            layers += [nn.Linear(128, 128), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(128, 10))
        for m in self.net:
            if isinstance(m, nn.Linear):  # He init, zero biases: early gradients spike
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = nn.functional.cross_entropy(self.net(inputs), targets)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


# --- the part that is about autoclip ------------------------------------------------------
clip = AutoClipCallback(None, suggest_steps=60)  # None: suggest first; or a clipper
out = Path(tempfile.mkdtemp())
trainer = pl.Trainer(
    max_epochs=3,
    callbacks=[clip],  # and no gradient_clip_val: the callback clips
    logger=pl.loggers.CSVLogger(out),
    log_every_n_steps=12,
    enable_progress_bar=False,
    enable_model_summary=False,
    accelerator="cpu",
)
trainer.fit(DeepMLP(), loader)
# ------------------------------------------------------------------------------------------

print(clip.proposal_.summary())
print(f"\nclipped with {clip.clipper!r}: {int(clip.clipper.clipped)} of {int(clip.clipper.steps)}")
with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
    rows = [r for r in csv.DictReader(f) if r.get("autoclip/grad_norm")]
print("\nstep  pre-clip norm (mean, max)  threshold  clipped  skipped")
for r in rows:
    v = {k.removeprefix("autoclip/"): float(x) for k, x in r.items() if k.startswith("autoclip/")}
    print(
        f"{int(r['step']):4d}  {v['grad_norm']:9.3f} {v['grad_norm_max']:9.3f}"
        f"  {v['threshold']:13.3f}  {v['clipped_frac']:7.0%}  {v['skipped_frac']:7.0%}"
    )
