"""GRU sequence classifier on the temporal-order problem, RMSprop at torch's default lr.

Why it is here: a held-out task for judging the tuning rules: none of them was designed or
tuned on it. It is the recurrent classifier as users often write it: a GRU read-out trained
with cross-entropy by ``torch.optim.RMSprop(model.parameters())`` (torch's default lr of
1e-2, ten times the 1e-3 of Keras and of most RNN recipes), clipped by norm as the Keras
examples do. Unlike the other recurrent tasks it is classification, not regression or
language modelling, and the recurrent cell is a GRU.

* Model: one ``nn.GRU`` layer (``HIDDEN`` units) over one-hot symbols, a linear head on the
  last hidden state; torch's default initialisation.
* Data: the temporal-order problem (Hochreiter and Schmidhuber 1997, task 6a), generated
  here. A sequence has ``SEQ_LEN`` symbols: distractors drawn from ``DISTRACTORS`` symbols,
  and two relevant symbols (each X or Y), one at a random step in ``FIRST`` and one in
  ``SECOND``; the class is their order (XX, XY, YX or YY). Every training batch is fresh, drawn
  from the task's seed; the ``N_EVAL`` held-out sequences come from ``EVAL_SEED``, the same for
  every task seed.
* Optimiser: RMSprop, lr ``LR``, torch's defaults otherwise (alpha 0.99, no momentum).
* Metric: ``eval_fn`` is the held-out cross-entropy (chance is ln 4 = 1.39; a solved run is
  near 0).
* Budget: ``STEPS`` optimizer steps, about 3.5 s of CPU time (one thread).
* Default clipper: global norm 1.0 (Keras' ``clipnorm=1.0`` in its RNN examples, and the usual
  ``clip_grad_norm_(params, 1.0)``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from autoclip.task import Task

SEQ_LEN = 40
DISTRACTORS = 4  # symbols 0..3; X and Y are symbols 4 and 5
N_SYMBOLS = DISTRACTORS + 2
FIRST = (5, 15)  # the first relevant symbol's step range [low, high)
SECOND = (20, 30)  # ...and the second's: the order must be kept across 5 to 25 steps
HIDDEN = 32
BATCH_SIZE = 32
LR = 1e-2  # torch.optim.RMSprop's default
STEPS = 500
N_EVAL = 1000
EVAL_SEED = 4321  # the held-out sequences never change with the task seed
TARGET_LOSS = 0.5  # well below chance (1.39): the order is being read


def temporal_order(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` one-hot sequences ``[n, SEQ_LEN, N_SYMBOLS]`` and their classes ``[n]`` (0..3)."""
    symbols = torch.randint(0, DISTRACTORS, (n, SEQ_LEN), generator=generator)
    first = torch.randint(*FIRST, (n,), generator=generator)
    second = torch.randint(*SECOND, (n,), generator=generator)
    which = torch.randint(0, 2, (n, 2), generator=generator)  # 0: X, 1: Y
    rows = torch.arange(n)
    symbols[rows, first] = DISTRACTORS + which[:, 0]
    symbols[rows, second] = DISTRACTORS + which[:, 1]
    x = F.one_hot(symbols, N_SYMBOLS).float()  # [n, T, S]
    y = 2 * which[:, 0] + which[:, 1]  # [n]: XX=0, XY=1, YX=2, YY=3
    return x, y


class GRUClassifier(nn.Module):
    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.gru = nn.GRU(N_SYMBOLS, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)  # [B, T, H]
        return self.head(out[:, -1])  # [B, 4]


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch  # [B, T, S], [B]
    return F.cross_entropy(model(x), y)


def make_task(seed: int = 0) -> Task:
    """The temporal-order task; ``seed`` fixes the initial weights and the training sequences."""
    gen = torch.Generator().manual_seed(seed)
    batches = [temporal_order(BATCH_SIZE, gen) for _ in range(STEPS)]
    x_eval, y_eval = temporal_order(N_EVAL, torch.Generator().manual_seed(EVAL_SEED))

    def eval_fn(model: nn.Module) -> float:
        return F.cross_entropy(model(x_eval), y_eval).item()

    return Task(
        model_fn=GRUClassifier,
        optimizer_fn=lambda params: torch.optim.RMSprop(params, lr=LR),
        loss_fn=_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="gru_classify",
        description=(__doc__ or "").splitlines()[0],
        target_loss=TARGET_LOSS,
        default_clipper={"name": "norm", "max_norm": 1.0},
    )
