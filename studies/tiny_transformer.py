"""Tiny GPT-style character transformer with AdamW: a negative control for clipping.

Why it is here: a pre-LayerNorm transformer trained by AdamW at a modest learning rate is the
case where clipping should barely matter. Adam divides each step by a running gradient scale,
so rescaling a gradient changes the update far less than under SGD, and pre-LN blocks keep
the early norms tame. A tuner that "finds" a large gain here is fitting noise; the honest
result is a tie across arms, and a clipper that hurts here is too aggressive.

* Model: nanoGPT-shaped: token and learned position embeddings, ``LAYERS`` pre-LN blocks
  (``nn.TransformerEncoderLayer`` with a causal mask, ``HEADS`` heads, width ``D_MODEL``,
  GELU MLP of 4x width, no dropout), final LayerNorm, linear head; N(0, 0.02) init.
* Data: the same CPython help text as ``char_lstm`` (``_data.py``): ``BATCH_SIZE`` windows
  of ``CONTEXT`` characters at random offsets drawn from the task's seed; last 10 % held out.
* Optimiser: AdamW, lr ``LR``, betas (0.9, 0.99), weight decay 0.1 (nanoGPT's
  ``shakespeare_char`` settings, without its warm-up and decay schedule).
* Metric: ``eval_fn`` is the held-out cross-entropy in nats per character over
  ``EVAL_WINDOWS`` fixed windows.
* Budget: ``STEPS`` optimizer steps, about 8 s of CPU time (one thread).
* Default clipper: global norm 1.0, the transformer convention (GPT-3; nanoGPT's
  ``grad_clip``; Hugging Face ``Trainer``'s ``max_grad_norm``).
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
D_MODEL = 64
HEADS = 4
LAYERS = 2
CONTEXT = 64
BATCH_SIZE = 16  # 1,024 tokens a step: the step time is matrix multiplies, linear in tokens
LR = 1e-3  # nanoGPT shakespeare_char; 3e-3 trains no faster here and makes clipping matter more
WEIGHT_DECAY = 0.1
STEPS = 400
EVAL_WINDOWS = 100
TARGET_LOSS = 2.2  # nats/char: reached by every arm in the second half of the run


class TinyGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB_SIZE, D_MODEL)
        self.pos = nn.Embedding(CONTEXT, D_MODEL)
        block = nn.TransformerEncoderLayer(
            D_MODEL,
            HEADS,
            4 * D_MODEL,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(block, LAYERS, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, VOCAB_SIZE, bias=False)
        mask = nn.Transformer.generate_square_subsequent_mask(CONTEXT)  # [C, C], -inf above
        self.register_buffer("mask", mask, persistent=False)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.tok(x) + self.pos(torch.arange(t, device=x.device))  # [B, T, D]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)  # [B, T, D]
        return self.head(self.norm(h))  # [B, T, V]


def make_task(seed: int = 0) -> Task:
    """The tiny-transformer task; ``seed`` fixes the initial weights and the training windows."""
    train_ids, held_ids = text_splits()
    batches = lm_train_batches(
        train_ids, batch_size=BATCH_SIZE, seq_len=CONTEXT, n_batches=STEPS, seed=seed
    )
    held_out = lm_eval_windows(held_ids, seq_len=CONTEXT, n_windows=EVAL_WINDOWS)

    def eval_fn(model: nn.Module) -> float:
        return lm_loss(model, held_out).item()

    return Task(
        model_fn=TinyGPT,
        optimizer_fn=lambda params: torch.optim.AdamW(
            params, lr=LR, betas=(0.9, 0.99), weight_decay=WEIGHT_DECAY
        ),
        loss_fn=lm_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="tiny_transformer",
        description=(__doc__ or "").splitlines()[0],
        target_loss=TARGET_LOSS,
        default_clipper={"name": "norm", "max_norm": 1.0},
    )
