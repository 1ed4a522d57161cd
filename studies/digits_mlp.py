"""Deep ReLU MLP without normalisation on scikit-learn's digits, SGD+momentum at a high lr.

Why it is here: the textbook case for clipping. A deep plain network (no batch or layer norm)
trained by SGD with heavy momentum at a learning rate this high either blows up within a
couple of hundred steps or collapses to chance (a constant prediction); a norm clip caps the
large early steps and the same learning rate then trains well. It is also where the threshold
is a cliff rather than a slope: in our runs every max_norm from 0.1 to 3 ends near the same
held-out loss, while from about 5 up seeds start to collapse again (``compare.py --sweep``).

* Model: ``DEPTH`` linear layers of width ``WIDTH`` with ReLU between them, He (Kaiming)
  normal initialisation, zero biases, no normalisation.
* Data: ``sklearn.datasets.load_digits`` (1,797 8x8 images, bundled with scikit-learn),
  standardised with the training split's statistics; a fixed stratified 80/20 split (the
  held-out part never changes with the seed). Minibatches of ``BATCH_SIZE``, reshuffled
  every epoch from the task's seed.
* Optimiser: SGD, lr ``LR``, momentum 0.9, weight decay ``WEIGHT_DECAY``.
* Metric: ``eval_fn`` is the held-out cross-entropy (chance is ln 10 = 2.30).
* Budget: ``STEPS`` optimizer steps (about 20 epochs), about 1 s of CPU time (one thread).
* Default clipper: global norm 1.0, the most common default in practice (Hugging Face
  ``Trainer``'s ``max_grad_norm``, and the usual ``clip_grad_norm_(params, 1.0)``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from autoclip.task import Task
from autoclip_studies._data import shuffled_batches

DEPTH = 10  # deep enough that, unnormalised, early gradients are large and erratic
WIDTH = 128
BATCH_SIZE = 64
LR = 0.1  # high for momentum 0.9 on this net: unclipped runs do not survive it
MOMENTUM = 0.9
WEIGHT_DECAY = 2e-3  # keeps held-out cross-entropy meaningful: without it, a run that fits
# the training set grows overconfident and its held-out loss drifts up with noise
STEPS = 450
TARGET_LOSS = 0.25  # held-out-level training loss a good run reaches well within STEPS
SPLIT_SEED = 0  # the train/held-out split is fixed, whatever the task seed


def _load() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.2, stratify=data.target, random_state=SPLIT_SEED
    )
    scaler = StandardScaler().fit(x_train)
    return (
        torch.tensor(scaler.transform(x_train), dtype=torch.float32),  # [1437, 64]
        torch.tensor(y_train, dtype=torch.long),
        torch.tensor(scaler.transform(x_test), dtype=torch.float32),  # [360, 64]
        torch.tensor(y_test, dtype=torch.long),
    )


def _model() -> nn.Module:
    sizes = [64] + [WIDTH] * (DEPTH - 1) + [10]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        linear = nn.Linear(fan_in, fan_out)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < DEPTH - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch  # [B, 64], [B]
    return F.cross_entropy(model(x), y)


def make_task(seed: int = 0) -> Task:
    """The digits MLP task; ``seed`` fixes the initial weights and the minibatch order."""
    x_train, y_train, x_test, y_test = _load()
    batches = shuffled_batches(x_train, y_train, batch_size=BATCH_SIZE, steps=STEPS, seed=seed)

    def eval_fn(model: nn.Module) -> float:
        return F.cross_entropy(model(x_test), y_test).item()

    return Task(
        model_fn=_model,
        optimizer_fn=lambda params: torch.optim.SGD(
            params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        ),
        loss_fn=_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="digits_mlp",
        description=(__doc__ or "").splitlines()[0],
        target_loss=TARGET_LOSS,
        default_clipper={"name": "norm", "max_norm": 1.0},
    )
