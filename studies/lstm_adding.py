"""The adding problem with an LSTM: sum two marked numbers 50 steps apart, Adam at a high lr.

Why it is here: the classic long-range recurrent task (Hochreiter and Schmidhuber 1997; the
benchmark of Pascanu et al. 2013, "On the difficulty of training recurrent neural networks",
where gradient-norm clipping was introduced). Its failure mode here is not a loss that
explodes but a run that never leaves the trivial solution, predicting the mean. At this
learning rate a third to a half of the unclipped seeds stay stuck there, while the same
learning rate clipped near the typical norm (0.25 to 1) solves the task on every seed we ran;
the loss is bimodal, so the spread across seeds is part of the result.

* Model: one LSTM layer (``HIDDEN`` units) reading ``[value, marker]`` pairs, a linear head on
  the last hidden state.
* Data: generated here. Each sequence has ``SEQ_LEN`` values drawn from U(0, 1) and a marker
  that is 1 at one step of the first half and one of the second; the target is the sum of the
  two marked values. ``N_TRAIN_BATCHES`` training batches are drawn from the task's seed and
  cycled; the ``N_EVAL`` held-out sequences come from a fixed seed, the same for every task seed.
* Optimiser: Adam at lr ``LR`` (ten times the usual 1e-3 for LSTMs).
* Metric: ``eval_fn`` is the held-out mean squared error. Predicting the mean (1) scores
  1/6 = 0.167; a solved run is below 0.01.
* Budget: ``STEPS`` optimizer steps, about 7 s of CPU time (one thread).
* Default clipper: global norm 5, Sutskever et al. 2014 ("Sequence to sequence learning with
  neural networks", LSTMs clipped at norm 5), also the default ``max_gradient_norm`` of
  TensorFlow's NMT tutorial: the conventional value for LSTMs outside the word-LM example.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from autoclip.task import Task

SEQ_LEN = 50  # each marker is 0..49 steps from the end; 50 keeps a run to seconds
HIDDEN = 64
BATCH_SIZE = 64
N_TRAIN_BATCHES = 200  # 12,800 fixed training sequences, cycled (a generator would be fine too)
N_EVAL = 1000
LR = 1e-2
STEPS = 800
TARGET_LOSS = 0.05  # well below the trivial 0.167: reached only once the task is solved
EVAL_SEED = 12345  # the held-out sequences never change with the task seed


def adding_batch(n: int, seq_len: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` adding-problem sequences: inputs ``[n, seq_len, 2]`` and targets ``[n]``."""
    values = torch.rand(n, seq_len, generator=gen)  # [N, T]
    half = seq_len // 2
    first = torch.randint(0, half, (n,), generator=gen)  # [N], in the first half
    second = torch.randint(half, seq_len, (n,), generator=gen)  # [N], in the second half
    rows = torch.arange(n)
    markers = torch.zeros(n, seq_len)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=-1)  # [N, T, 2]
    y = values[rows, first] + values[rows, second]  # [N]
    return x, y


class AddingLSTM(nn.Module):
    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)  # [B, T, H]
        return self.head(out[:, -1]).squeeze(-1)  # [B]


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(model(x), y)


def make_task(seed: int = 0) -> Task:
    """The adding-problem task; ``seed`` fixes the initial weights and the training sequences."""
    gen = torch.Generator().manual_seed(seed)
    batches = [adding_batch(BATCH_SIZE, SEQ_LEN, gen) for _ in range(N_TRAIN_BATCHES)]
    x_eval, y_eval = adding_batch(N_EVAL, SEQ_LEN, torch.Generator().manual_seed(EVAL_SEED))

    def eval_fn(model: nn.Module) -> float:
        return F.mse_loss(model(x_eval), y_eval).item()

    return Task(
        model_fn=AddingLSTM,
        optimizer_fn=lambda params: torch.optim.Adam(params, lr=LR),
        loss_fn=_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="lstm_adding",
        description=(__doc__ or "").splitlines()[0],
        target_loss=TARGET_LOSS,
        default_clipper={"name": "norm", "max_norm": 5.0},
    )
