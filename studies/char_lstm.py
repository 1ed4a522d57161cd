"""Character-level LSTM language model on CPython's help text, plain SGD at lr 20.

Why it is here: the setting of PyTorch's ``word_language_model`` example, the best-known use
of a fixed clipping threshold: plain SGD at lr 20 with ``clip_grad_norm_(params, 0.25)``. The
learning rate is only usable because of the clip: without it the loss climbs far above chance
(ln 97 = 4.6) on most seeds and stays there, where a clip at 0.25 reaches about 1.5.

* Model: character embedding (``EMBED``), one LSTM layer (``HIDDEN``), linear decoder, with
  the example's uniform(-0.1, 0.1) init of the embedding and decoder. Smaller than the
  example (two layers of 200 and dropout) so a run takes seconds, not hours.
* Data: the ``pydoc_data.topics`` help pages that ship with CPython (about 465k characters;
  see ``_data.py``), a fixed 97-symbol vocabulary, the last 10 % held out. Each training batch
  is ``BATCH_SIZE`` windows of ``SEQ_LEN`` characters (the example's ``bptt`` of 35) at random
  offsets drawn from the task's seed. Unlike the example, the hidden state is not carried from
  one batch to the next: each batch is independent, which the loss function needs.
* Optimiser: SGD at lr ``LR`` = 20, no momentum, as in the example (which also anneals the lr
  by 4 when validation stalls; a run this short never would).
* Metric: ``eval_fn`` is the held-out cross-entropy in nats per character over
  ``EVAL_WINDOWS`` fixed windows of ``EVAL_LEN`` characters.
* Budget: ``STEPS`` optimizer steps, about 7 s of CPU time (one thread).
* Default clipper: global norm 0.25, ``word_language_model``'s ``--clip`` default.
"""

from __future__ import annotations

import torch
from torch import nn

from autoclip.task import Task
from autoclip_studies._data import (
    UNKNOWN,
    lm_eval_windows,
    lm_loss,
    lm_train_batches,
    text_splits,
)

VOCAB_SIZE = UNKNOWN + 1
EMBED = 64
HIDDEN = 128
BATCH_SIZE = 32
SEQ_LEN = 35  # word_language_model's bptt
LR = 20.0  # word_language_model's lr
STEPS = 600  # 600 x 32 x 35 = 670k characters, about 1.6 passes over the training split
EVAL_WINDOWS = 100
EVAL_LEN = 100
TARGET_LOSS = 2.0  # nats/char: past the unigram level (about 3.3), into real words


class CharLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, EMBED)
        self.lstm = nn.LSTM(EMBED, HIDDEN, batch_first=True)
        self.decoder = nn.Linear(HIDDEN, VOCAB_SIZE)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))  # [B, T, H]
        return self.decoder(out)  # [B, T, V]


def make_task(seed: int = 0) -> Task:
    """The char-LSTM task; ``seed`` fixes the initial weights and the training windows."""
    train_ids, held_ids = text_splits()
    batches = lm_train_batches(
        train_ids, batch_size=BATCH_SIZE, seq_len=SEQ_LEN, n_batches=STEPS, seed=seed
    )
    held_out = lm_eval_windows(held_ids, seq_len=EVAL_LEN, n_windows=EVAL_WINDOWS)

    def eval_fn(model: nn.Module) -> float:
        return lm_loss(model, held_out).item()

    return Task(
        model_fn=CharLSTM,
        optimizer_fn=lambda params: torch.optim.SGD(params, lr=LR),
        loss_fn=lm_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="char_lstm",
        description=(__doc__ or "").splitlines()[0],
        target_loss=TARGET_LOSS,
        default_clipper={"name": "norm", "max_norm": 0.25},
    )
