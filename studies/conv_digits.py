"""Small BatchNorm CNN on scikit-learn's 8x8 digits, SGD with Nesterov momentum, no warm-up.

Why it is here: a held-out task for judging the tuning rules: none of them was designed or
tuned on it. It is the image-classification recipe (conv, BatchNorm, ReLU; SGD with Nesterov
momentum 0.9 and weight decay 5e-4, as in the ResNet recipes) run at a learning rate above
what the linear-scaling rule gives for this batch size and without the warm-up that Goyal et
al. (2017) pair with large rates. The only convolutional and the only normalised-by-batch
model among the bundled tasks.

* Model: three 3x3 convolutions (16, 32, 64 channels, no bias) each followed by
  ``nn.BatchNorm2d`` and ReLU, a 2x2 max-pool after the second (8x8 -> 4x4), global average
  pooling and a linear head; torch's default initialisation.
* Data: ``sklearn.datasets.load_digits`` (1,797 8x8 images, bundled with scikit-learn) as
  one-channel images, standardised with the training split's pixel mean and standard
  deviation; a fixed stratified 80/20 split (the held-out part never changes with the seed).
  Minibatches of ``BATCH_SIZE``, reshuffled every epoch from the task's seed.
* Optimiser: SGD, lr ``LR``, Nesterov momentum 0.9, weight decay ``WEIGHT_DECAY``, no
  schedule.
* Metric: ``eval_fn`` is the held-out cross-entropy (chance is ln 10 = 2.30), BatchNorm in
  eval mode (running statistics).
* Budget: ``STEPS`` optimizer steps (about 13 epochs), about 2 s of CPU time (one thread).
* Default clipper: global norm 1.0, the usual ``clip_grad_norm_(params, 1.0)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from autoclip.task import Task
from autoclip_studies._data import shuffled_batches

CHANNELS = (16, 32, 64)
BATCH_SIZE = 64
LR = 0.2  # eight times the linear-scaling rule's 0.1 * 64 / 256, with no warm-up
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4  # the ResNet recipe's
STEPS = 300
TARGET_LOSS = 0.3
SPLIT_SEED = 0  # the train/held-out split is fixed, whatever the task seed


def _load() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.images, data.target, test_size=0.2, stratify=data.target, random_state=SPLIT_SEED
    )
    x_train = torch.tensor(x_train, dtype=torch.float32)[:, None]  # [1437, 1, 8, 8]
    x_test = torch.tensor(x_test, dtype=torch.float32)[:, None]  # [360, 1, 8, 8]
    mean, std = x_train.mean(), x_train.std()
    return (
        (x_train - mean) / std,
        torch.tensor(y_train, dtype=torch.long),
        (x_test - mean) / std,
        torch.tensor(y_test, dtype=torch.long),
    )


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),  # BatchNorm supplies the shift
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


def _model() -> nn.Module:
    c1, c2, c3 = CHANNELS
    return nn.Sequential(
        *_conv_block(1, c1),  # [B, c1, 8, 8]
        *_conv_block(c1, c2),  # [B, c2, 8, 8]
        nn.MaxPool2d(2),  # [B, c2, 4, 4]
        *_conv_block(c2, c3),  # [B, c3, 4, 4]
        nn.AdaptiveAvgPool2d(1),  # [B, c3, 1, 1]
        nn.Flatten(),  # [B, c3]
        nn.Linear(c3, 10),  # [B, 10]
    )


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch  # [B, 1, 8, 8], [B]
    return F.cross_entropy(model(x), y)


def make_task(seed: int = 0) -> Task:
    """The digits CNN task; ``seed`` fixes the initial weights and the minibatch order."""
    x_train, y_train, x_test, y_test = _load()
    batches = shuffled_batches(x_train, y_train, batch_size=BATCH_SIZE, steps=STEPS, seed=seed)

    def eval_fn(model: nn.Module) -> float:
        return F.cross_entropy(model(x_test), y_test).item()

    return Task(
        model_fn=_model,
        optimizer_fn=lambda params: torch.optim.SGD(
            params, lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY
        ),
        loss_fn=_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="conv_digits",
        description=(__doc__ or "").splitlines()[0],
        target_loss=TARGET_LOSS,
        default_clipper={"name": "norm", "max_norm": 1.0},
    )
