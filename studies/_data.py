"""Shared data helpers for the bundled studies: local data only, nothing downloaded.

* The text corpus is CPython's own ``pydoc_data.topics`` (the help pages behind ``help("if")``),
  which ships with every CPython install. Its exact contents follow the Python version, so
  results on another interpreter differ slightly; the split and vocabulary do not.
* Every helper takes an explicit seed or generator and touches no global random state.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = [
    "shuffled_batches",
    "VOCAB",
    "UNKNOWN",
    "lm_eval_windows",
    "lm_train_batches",
    "text_splits",
]

# A fixed vocabulary (printable ASCII, newline, and one "unknown" slot for the rest: curly
# quotes, dashes) so that token ids do not depend on which characters a Python version's help
# pages happen to contain.
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = len(VOCAB)  # id of every character outside VOCAB; vocabulary size is UNKNOWN + 1
_INDEX = {ch: i for i, ch in enumerate(VOCAB)}


@functools.cache
def _corpus_ids() -> Tensor:
    """All help topics, in sorted key order, as a 1-D int64 tensor of character ids."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[key] for key in sorted(topics))
    return torch.tensor([_INDEX.get(ch, UNKNOWN) for ch in text], dtype=torch.long)


def text_splits(held_out_fraction: float = 0.1) -> tuple[Tensor, Tensor]:
    """(train ids, held-out ids): the last ``held_out_fraction`` of the corpus is held out.

    A contiguous tail, not a random sample, so no held-out window overlaps a training one.
    """
    ids = _corpus_ids()
    cut = int(len(ids) * (1.0 - held_out_fraction))
    return ids[:cut], ids[cut:]


def lm_train_batches(
    ids: Tensor, *, batch_size: int, seq_len: int, n_batches: int, seed: int
) -> list[tuple[Tensor, Tensor]]:
    """``n_batches`` of (input [B, T], target [B, T]) windows at random offsets of ``ids``.

    Random offsets (drawn from ``seed``) rather than word_language_model's fixed ``batchify``
    columns: a short run then sees text from the whole training split, not one corner of it.
    """
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len - 1, (n_batches, batch_size), generator=gen)
    offsets = torch.arange(seq_len + 1)
    out = []
    for row in starts:
        window = ids[row[:, None] + offsets]  # [B, T+1]
        out.append((window[:, :-1].contiguous(), window[:, 1:].contiguous()))
    return out


def lm_eval_windows(ids: Tensor, *, seq_len: int, n_windows: int) -> tuple[Tensor, Tensor]:
    """(input [N, T], target [N, T]): ``n_windows`` evenly spaced windows of ``ids``."""
    starts = torch.linspace(0, len(ids) - seq_len - 1, n_windows).long()
    window = ids[starts[:, None] + torch.arange(seq_len + 1)]  # [N, T+1]
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()


def lm_loss(model, batch):
    """Next-character cross-entropy of a ``[B, T]`` batch: logits ``[B, T, V]`` vs ``[B, T]``."""
    from torch.nn import functional as F

    x, y = batch  # [B, T], [B, T]
    logits = model(x)  # [B, T, V]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def shuffled_batches(
    x: Tensor, y: Tensor, *, batch_size: int, steps: int, seed: int
) -> list[tuple[Tensor, Tensor]]:
    """``steps`` minibatches of ``(x, y)``: epoch after epoch, each a fresh permutation from
    ``seed``, the ragged last batch of each epoch dropped."""
    gen = torch.Generator().manual_seed(seed)
    per_epoch = len(x) // batch_size
    batches = []
    while len(batches) < steps:
        order = torch.randperm(len(x), generator=gen)
        for i in range(per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            batches.append((x[idx], y[idx]))
    return batches[:steps]
