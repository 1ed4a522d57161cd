"""Deep tanh MLP regressing scikit-learn's diabetes targets, Adam at ten times its default lr.

Why it is here: a held-out task for judging the tuning rules: none of them was designed or
tuned on it. It is tabular regression with a network far deeper than the data needs (eight
tanh layers for ten features and 353 training rows), trained with Adam at lr 1e-2, the way a
user tries to speed up a slow fit; the only tabular and the only tanh model among the bundled
tasks, and the only small-data one (every training row comes back every 11 steps). Inputs and
targets are both standardised, as regression tutorials tell users to do: the raw-scale case
is ``ar_forecast``'s, and with Adam the raw scale would mostly slow the fit (Adam's step is
bounded by its lr whatever the gradient's size) rather than test the clipping.

* Model: ``DEPTH`` linear layers of width ``WIDTH`` with tanh between them and a linear
  output; torch's default ``nn.Linear`` initialisation (what a user who writes the layers
  gets).
* Data: ``sklearn.datasets.load_diabetes`` (442 patients, 10 features, bundled with
  scikit-learn), a fixed 80/20 split (the held-out part never changes with the seed); features
  and target standardised with the training split's statistics. Minibatches of
  ``BATCH_SIZE``, reshuffled every epoch from the task's seed.
* Optimiser: Adam, lr ``LR``, betas (0.9, 0.999), no weight decay, no schedule.
* Metric: ``eval_fn`` is the held-out mean squared error in standardised units (predicting
  the training mean scores 0.84 on this split; a least-squares linear fit 0.56).
* Budget: ``STEPS`` optimizer steps (about 90 epochs), about 2 s of CPU time (one thread).
* Default clipper: global norm 1.0, the usual ``clip_grad_norm_(params, 1.0)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from autoclip.task import Task
from autoclip_studies._data import shuffled_batches

DEPTH = 8  # linear layers; far more than ten features need, as in the over-built first try
WIDTH = 64
BATCH_SIZE = 32
LR = 1e-2  # ten times Adam's default
STEPS = 1000  # each step is cheap (a 10-feature batch of 32): the budget is in steps
TARGET_LOSS = 0.6  # training loss near a linear fit's level (the mean scores 1 on train)
SPLIT_SEED = 0  # the train/held-out split is fixed, whatever the task seed


def _load() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    data = load_diabetes()  # features come mean-centred and scaled; standardise them anyway
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.2, random_state=SPLIT_SEED
    )
    x_scaler = StandardScaler().fit(x_train)
    y_scaler = StandardScaler().fit(y_train[:, None])
    return (
        torch.tensor(x_scaler.transform(x_train), dtype=torch.float32),  # [353, 10]
        torch.tensor(y_scaler.transform(y_train[:, None])[:, 0], dtype=torch.float32),  # [353]
        torch.tensor(x_scaler.transform(x_test), dtype=torch.float32),  # [89, 10]
        torch.tensor(y_scaler.transform(y_test[:, None])[:, 0], dtype=torch.float32),  # [89]
    )


def _model() -> nn.Module:
    sizes = [10] + [WIDTH] * (DEPTH - 1) + [1]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < DEPTH - 1:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch  # [B, 10], [B]
    return F.mse_loss(model(x).squeeze(-1), y)


def make_task(seed: int = 0) -> Task:
    """The diabetes regression task; ``seed`` fixes the initial weights and the batch order."""
    x_train, y_train, x_test, y_test = _load()
    batches = shuffled_batches(x_train, y_train, batch_size=BATCH_SIZE, steps=STEPS, seed=seed)

    def eval_fn(model: nn.Module) -> float:
        return _loss(model, (x_test, y_test)).item()

    return Task(
        model_fn=_model,
        optimizer_fn=lambda params: torch.optim.Adam(params, lr=LR),
        loss_fn=_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="deep_regression",
        description=(__doc__ or "").splitlines()[0],
        target_loss=TARGET_LOSS,
        default_clipper={"name": "norm", "max_norm": 1.0},
    )
