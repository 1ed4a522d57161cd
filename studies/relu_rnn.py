"""ReLU RNN on the adding problem, recurrent weights at 1.05x identity: its gradients explode.

The adding problem (Hochreiter & Schmidhuber 1997): each input is a sequence of ``SEQ_LEN``
pairs (a value drawn from U(-1, 1), as in the original, and a marker that is 1 at exactly two
positions, one in each half); the target is the sum of the two marked values. Predicting 0
gives an MSE of 2/3 (the variance of the target); solving it drives the MSE towards 0.

The model is a one-layer ``nn.RNN`` with ReLU units and a linear read-out of the last hidden
state. As in the "IRNN" recipe (Le et al. 2015) the recurrent matrix starts at a multiple of
the identity and the biases at zero, here with the gain ``RECURRENT_GAIN = 1.05``: just above
1, so activity and backpropagated gradients grow like 1.05^t along the sequence (1.05^40 ~ 7).
The read-out starts at zero, so the first steps are calm and the explosion develops as the
read-out and the recurrent weights grow, the way it does in practice. Trained with plain SGD
(momentum 0.9) the run meets the exploding-gradient regime of Pascanu et al. (2013): most
steps have norms around 1, and every few dozen steps one is 10-100x larger, almost all of it
in the recurrent weights ``rnn.weight_hh_l0``; such steps throw the weights off course, and
unclipped training never gets below the trivial MSE of 2/3.

Everything is generated locally from fixed seeds: the data from ``DATA_SEED`` (the same for
every task seed), the model from the task seed. 300 steps take a few seconds on 2 CPU cores;
the default budget is ``STEPS = 1000`` because that is where clipped runs have learned enough
for the arms to differ. ``eval_fn`` is the MSE on ``N_EVAL`` held-out sequences.
"""

from __future__ import annotations

import torch
from torch import nn

from autoclip.task import Task

SEQ_LEN = 40  # 1.05^40 ~ 7: long enough for the gain to matter, short enough to run fast
HIDDEN = 64
RECURRENT_GAIN = 1.05  # slightly above identity: the explosion this task exists for
LR = 0.003  # spikes come every few dozen steps; higher rates kill the run within ten steps
MOMENTUM = 0.9
BATCH = 32
N_TRAIN_BATCHES = 128  # 4,096 training sequences, cycled
N_EVAL = 1024
STEPS = 1000
DATA_SEED = 1234


def adding_problem(n: int, seq_len: int, generator: torch.Generator) -> tuple:
    """``n`` sequences ``[n, seq_len, 2]`` of (value, marker) pairs and their targets ``[n]``."""
    values = torch.rand(n, seq_len, generator=generator) * 2 - 1  # U(-1, 1)
    half = seq_len // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, seq_len, (n,), generator=generator)
    markers = torch.zeros(n, seq_len)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=-1)  # [n, seq_len, 2]
    y = (values * markers).sum(dim=1)  # [n]
    return x, y


class ReLURNN(nn.Module):
    """One-layer ReLU RNN (recurrent matrix ``gain * I``), zero read-out of the last step."""

    def __init__(self, hidden: int = HIDDEN, gain: float = RECURRENT_GAIN) -> None:
        super().__init__()
        self.rnn = nn.RNN(2, hidden, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(gain * torch.eye(hidden))
            self.rnn.bias_ih_l0.zero_()
            self.rnn.bias_hh_l0.zero_()
            self.head.weight.zero_()
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # [batch, seq_len, hidden]
        return self.head(out[:, -1]).squeeze(-1)  # [batch]


def _loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def make_task(seed: int = 0) -> Task:
    """The exploding ReLU RNN task; ``seed`` fixes the model, the data never change."""
    g = torch.Generator().manual_seed(DATA_SEED)
    n_train = BATCH * N_TRAIN_BATCHES
    x, y = adding_problem(n_train + N_EVAL, SEQ_LEN, g)
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, n_train, BATCH)]
    x_eval, y_eval = x[n_train:], y[n_train:]

    def eval_fn(model: nn.Module) -> float:
        return float(nn.functional.mse_loss(model(x_eval), y_eval))

    return Task(
        model_fn=ReLURNN,
        optimizer_fn=lambda params: torch.optim.SGD(params, lr=LR, momentum=MOMENTUM),
        loss_fn=_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="relu_rnn",
        description=__doc__.strip().splitlines()[0],
        target_loss=0.3,
        default_clipper={"name": "norm", "max_norm": 1.0},
    )
