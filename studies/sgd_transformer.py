"""Small causal transformer LM trained with SGD + momentum at a high learning rate.

Why it is here: the case a new user meets when they train a transformer the way they train a
CNN, with SGD and heavy momentum at a learning rate that is only usable clipped. Unclipped,
and clipped as loosely as ``max_norm`` 10, the run blows up within the first hundred steps;
clipped tightly it trains well. Where most steps are clipped the threshold acts as a step size,
so the right one depends on the learning rate and the loss surface, not on the size of the
warm-up's gradients: the case the measured ``suggest`` was built for.

* Model: :class:`CausalLM`: token and learned position embeddings, ``LAYERS`` pre-LN
  ``nn.TransformerEncoderLayer`` blocks with a causal mask (``HEADS`` heads, width
  ``D_MODEL``, GELU MLP of 4x width, no dropout), final LayerNorm, linear head; N(0, 0.02)
  init (GPT-2's).
* Data: the CPython help text of ``char_lstm`` (``_data.py``, nothing downloaded):
  ``BATCH_SIZE`` windows of ``CONTEXT`` characters at random offsets from the task's seed;
  the last 10 % held out.
* Optimiser: SGD, lr ``LR``, momentum 0.9, no schedule.
* Metric: ``eval_fn`` is the held-out cross-entropy in nats per character.
* Budget: ``STEPS`` optimizer steps, about 2 s of CPU time (one thread).
* Default clipper: global norm 1.0, the transformer convention.
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
CONTEXT = 32
BATCH_SIZE = 8
LR = 1.0  # high for SGD with momentum 0.9 on a transformer: usable only clipped
MOMENTUM = 0.9
STEPS = 200
EVAL_WINDOWS = 100
TARGET_LOSS = 2.6  # nats/char: past the unigram level (about 3.3)


class CausalLM(nn.Module):
    """A GPT-shaped character model from torch's own ``nn.TransformerEncoderLayer``."""

    def __init__(
        self,
        d_model: int = D_MODEL,
        heads: int = HEADS,
        layers: int = LAYERS,
        context: int = CONTEXT,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB_SIZE, d_model)
        self.pos = nn.Embedding(context, d_model)
        block = nn.TransformerEncoderLayer(
            d_model,
            heads,
            4 * d_model,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=norm_first,
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB_SIZE, bias=False)
        mask = nn.Transformer.generate_square_subsequent_mask(context)  # [C, C], -inf above
        self.register_buffer("mask", mask, persistent=False)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.tok(x) + self.pos(torch.arange(t, device=x.device))  # [B, T, D]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)  # [B, T, D]
        return self.head(self.norm(h))  # [B, T, V]


def lm_task(
    name: str, seed: int, optimizer_fn, *, steps: int, target: float, doc: str, model_fn=CausalLM
) -> Task:
    """A character-LM task on the bundled text with :class:`CausalLM` and ``optimizer_fn``."""
    train_ids, held_ids = text_splits()
    batches = lm_train_batches(
        train_ids, batch_size=BATCH_SIZE, seq_len=CONTEXT, n_batches=steps, seed=seed
    )
    held_out = lm_eval_windows(held_ids, seq_len=CONTEXT, n_windows=EVAL_WINDOWS)

    def eval_fn(model: nn.Module) -> float:
        return lm_loss(model, held_out).item()

    return Task(
        model_fn=model_fn,
        optimizer_fn=optimizer_fn,
        loss_fn=lm_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=steps,
        name=name,
        description=doc.splitlines()[0],
        target_loss=target,
        default_clipper={"name": "norm", "max_norm": 1.0},
    )


def make_task(seed: int = 0) -> Task:
    """The SGD-transformer task; ``seed`` fixes the initial weights and the training windows."""
    return lm_task(
        "sgd_transformer",
        seed,
        lambda params: torch.optim.SGD(params, lr=LR, momentum=MOMENTUM),
        steps=STEPS,
        target=TARGET_LOSS,
        doc=__doc__ or "",
    )
