"""Tuning the clipper inside your own Lightning + Optuna study.

``autoclip.suggest`` measures the model once; inside the objective,
``autoclip.suggest_clipper(trial, proposal)`` samples a clipper from the proposal's search
ranges (strategy and threshold, as Optuna parameters ``clip.strategy``, ``clip.<strategy>.*``),
``AutoClipCallback`` clips the trial's training with it, and optuna-integration's
``PyTorchLightningPruningCallback`` stops trials whose validation loss lags. A trial whose
training diverges (NaN loss) returns NaN, which Optuna records as failed: the study goes on.
Eight short trials of a deep ReLU MLP on digits; well under a minute on a CPU:

    python examples/lightning_optuna.py
"""

import math
import warnings

import lightning.pytorch as pl
import optuna
import torch
from optuna_integration import PyTorchLightningPruningCallback
from sklearn.datasets import load_digits
from torch import nn

import autoclip
from autoclip.integrations.lightning import AutoClipCallback

torch.set_num_threads(1)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
optuna.logging.set_verbosity(optuna.logging.WARNING)

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32)
x = (x - x.mean(0)) / (x.std(0) + 1e-6)
y = torch.tensor(digits.target)
train = torch.utils.data.TensorDataset(x[:1280], y[:1280])
val = torch.utils.data.TensorDataset(x[1280:], y[1280:])


def loaders():
    g = torch.Generator().manual_seed(0)
    return (
        torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, generator=g),
        torch.utils.data.DataLoader(val, batch_size=256),
    )


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

    def loss(self, batch):
        inputs, targets = batch
        return nn.functional.cross_entropy(self.net(inputs), targets)

    def training_step(self, batch, batch_idx):
        return self.loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


# Measure once, before the study: a fresh model, its optimizer, the training batches.
pl.seed_everything(0, verbose=False)
module = DeepMLP()
proposal = autoclip.suggest(
    module, module.configure_optimizers(), lambda m, b: m.loss(b), loaders()[0], steps=60
)
print(f"autoclip recommends {proposal.recommended.describe()}")


def objective(trial: optuna.Trial) -> float:
    pl.seed_everything(0, verbose=False)
    clipper = autoclip.suggest_clipper(trial, proposal, strategies=("norm", "quantile", "zscore"))
    trainer = pl.Trainer(
        max_epochs=4,
        callbacks=[
            AutoClipCallback(clipper),
            PyTorchLightningPruningCallback(trial, monitor="val_loss"),
        ],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    train_loader, val_loader = loaders()
    trainer.fit(DeepMLP(), train_loader, val_loader)
    val_loss = trainer.callback_metrics["val_loss"].item()
    return val_loss if math.isfinite(val_loss) else math.nan  # NaN: Optuna fails the trial


study = optuna.create_study(
    direction="minimize",
    sampler=optuna.samplers.TPESampler(seed=0),
    pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
)
# The recommended setting first, as a reference point (Optuna's public enqueue_trial).
rec = proposal.recommended
if rec.strategy == "norm":
    study.enqueue_trial({"clip.strategy": "norm", "clip.norm.max_norm": rec.params["max_norm"]})
study.optimize(objective, n_trials=8)

states = [t.state.name for t in study.trials]
print(
    f"trials: {states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
    f"{states.count('FAIL')} failed"
)
print(f"best val_loss {study.best_value:.4f} with {study.best_params}")
