"""Biased matrix factorisation (user and item embeddings) on synthetic 1-5 star ratings, SGD.

Why it is here: a held-out task for judging the tuning rules: none of them was designed or
tuned on it. It is the biased matrix factorisation of the Netflix prize (Funk 2006; Koren,
Bell & Volinsky 2009: ``mu + b_u + b_i + p_u . q_i`` fitted by SGD on the squared error with
an L2 penalty), with the defaults of scikit-surprise's ``SVD`` (100 factors drawn from
N(0, 0.1), biases from zero, lr 0.005, penalty 0.02, 20 epochs), vectorised over minibatches
for PyTorch: the per-rating losses are *summed*, so one step of a batch of
``BATCH_SIZE`` ratings moves each row as far as that many single-rating updates would, and
the gradient's norm grows with the batch. Users and items differ in activity (log-normal, as
in real ratings: a few users and films account for much of the data), so the rows of a
popular item get many times the gradient of a rare one. The only embedding-table model, the
only one without a nonlinearity, and the only task whose parameters are each touched by only
a few examples per step.

* Model: ``nn.Embedding(N_USERS, DIM)`` and ``nn.Embedding(N_ITEMS, DIM)`` initialised from
  N(0, ``INIT_STD``); a bias per user and per item (zeros at the start); the prediction is
  ``mu + b_u + b_i + p_u . q_i``, with ``mu`` the training mean, a fixed buffer.
* Data: synthetic, generated here from ``DATA_SEED`` (the same for every task seed): a true
  rank-``TRUE_RANK`` preference matrix plus user and item biases around 3.6 stars, Gaussian
  noise of standard deviation ``NOISE``, rounded and clipped to 1..5 stars; ``N_RATINGS``
  distinct (user, item) pairs drawn by log-normal activity weights (standard deviation
  ``ACTIVITY_SPREAD`` in log space: the busiest user has 325 training ratings, the median 29);
  the last ``HELD_OUT_FRACTION`` of them held out. Minibatches of ``BATCH_SIZE`` ratings,
  reshuffled every epoch from the task's seed.
* Loss: ``0.5 * sum (r - r_hat)^2 + 0.5 * REG * sum (|p_u|^2 + |q_i|^2 + b_u^2 + b_i^2)`` over
  the batch's ratings (surprise's update is the gradient of this, one rating at a time).
* Optimiser: SGD, lr ``LR``, no momentum, no weight decay (the penalty is in the loss), no
  schedule.
* Metric: ``eval_fn`` is the held-out mean squared error in stars^2 (predicting the training
  mean scores 0.83; the noise and the rounding alone about 0.33; a fitted run about 0.52).
* Budget: ``STEPS`` optimizer steps (20 epochs), about 2 s of CPU time (one thread).
* Default clipper: global norm 1.0, the usual ``clip_grad_norm_(params, 1.0)``.

Checked with fixed thresholds only, no search (seed 0, held-out MSE after the full budget):
no clipping 0.5225; global norm 0.01: 0.8427, 0.1: 0.8276, 1: 0.7205, 10: 0.5488, 100: 0.5225
(as unclipped: the summed loss's gradient norm is about 30 at the start, 20 at the end).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from autoclip.task import Task
from autoclip_studies._data import shuffled_batches

N_USERS = 600
N_ITEMS = 400
N_RATINGS = 30_000  # 12.5% of the matrix observed (MovieLens-100k: 6.3%)
HELD_OUT_FRACTION = 0.2
TRUE_RANK = 5
NOISE = 0.5  # stars, before rounding
ACTIVITY_SPREAD = 1.0  # log-normal sigma of how often a user (an item) is rated
DIM = 100  # surprise's n_factors
INIT_STD = 0.1  # surprise's init_std_dev
BATCH_SIZE = 256
LR = 0.005  # surprise's lr_all: the step of one rating, as the loss is summed over the batch
REG = 0.02  # surprise's reg_all
STEPS = 1875  # 20 epochs (surprise's n_epochs) of the 24,000 training ratings
TARGET_LOSS = 90.0  # summed over 256 ratings: a training MSE of about 0.7 stars^2
DATA_SEED = 2009  # the ratings (and so the held-out pairs) never change with the task seed


@functools.cache
def _ratings() -> tuple[torch.Tensor, torch.Tensor]:
    """(pairs [N_RATINGS, 2] of (user, item) ids, ratings [N_RATINGS] in 1..5 stars)."""
    gen = torch.Generator().manual_seed(DATA_SEED)
    user_factors = torch.randn(N_USERS, TRUE_RANK, generator=gen) * 0.45  # [U, R]
    item_factors = torch.randn(N_ITEMS, TRUE_RANK, generator=gen) * 0.45  # [I, R]
    user_bias = torch.randn(N_USERS, generator=gen) * 0.4  # [U]
    item_bias = torch.randn(N_ITEMS, generator=gen) * 0.5  # [I]
    user_weight = torch.exp(ACTIVITY_SPREAD * torch.randn(N_USERS, generator=gen))  # [U]
    item_weight = torch.exp(ACTIVITY_SPREAD * torch.randn(N_ITEMS, generator=gen))  # [I]
    # distinct pairs, drawn without replacement by the product of the two activities
    cell_weight = (user_weight[:, None] * item_weight[None, :]).flatten()  # [U * I]
    cells = torch.multinomial(cell_weight, N_RATINGS, replacement=False, generator=gen)
    users, items = cells // N_ITEMS, cells % N_ITEMS  # [N], [N]
    score = 3.6 + user_bias[users] + item_bias[items]
    score = score + (user_factors[users] * item_factors[items]).sum(-1)
    score = score + NOISE * torch.randn(N_RATINGS, generator=gen)
    stars = score.round().clamp(1, 5)  # [N]
    return torch.stack([users, items], dim=1), stars


def _load() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    pairs, stars = _ratings()
    cut = int(N_RATINGS * (1 - HELD_OUT_FRACTION))  # the draw order is already random
    return pairs[:cut], stars[:cut], pairs[cut:], stars[cut:]


class BiasedMF(nn.Module):
    """``mu + b_u + b_i + p_u . q_i`` (Koren et al. 2009), ``mu`` fixed at the training mean."""

    def __init__(self, mean_rating: float) -> None:
        super().__init__()
        self.user = nn.Embedding(N_USERS, DIM)
        self.item = nn.Embedding(N_ITEMS, DIM)
        nn.init.normal_(self.user.weight, std=INIT_STD)
        nn.init.normal_(self.item.weight, std=INIT_STD)
        self.user_bias = nn.Embedding(N_USERS, 1)
        self.item_bias = nn.Embedding(N_ITEMS, 1)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        self.register_buffer("mu", torch.tensor(mean_rating))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        u, i = pairs[:, 0], pairs[:, 1]  # [B], [B]
        dot = (self.user(u) * self.item(i)).sum(-1)  # [B]
        return self.mu + self.user_bias(u)[:, 0] + self.item_bias(i)[:, 0] + dot  # [B]


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Half the summed squared error plus the L2 penalty of every row each rating touches."""
    pairs, stars = batch  # [B, 2], [B]
    u, i = pairs[:, 0], pairs[:, 1]  # [B], [B]
    rows = (model.user(u), model.item(i), model.user_bias(u), model.item_bias(i))
    penalty = sum(r.pow(2).sum() for r in rows)
    return 0.5 * (model(pairs) - stars).pow(2).sum() + 0.5 * REG * penalty


def _mse(model: nn.Module, pairs: torch.Tensor, stars: torch.Tensor) -> float:
    with torch.no_grad():
        return F.mse_loss(model(pairs), stars).item()


def make_task(seed: int = 0) -> Task:
    """The ratings task; ``seed`` fixes the initial embeddings and the batch order."""
    pairs_train, stars_train, pairs_test, stars_test = _load()
    mean_rating = float(stars_train.mean())
    batches = shuffled_batches(
        pairs_train, stars_train, batch_size=BATCH_SIZE, steps=STEPS, seed=seed
    )

    def eval_fn(model: nn.Module) -> float:
        return _mse(model, pairs_test, stars_test)

    return Task(
        model_fn=lambda: BiasedMF(mean_rating),
        optimizer_fn=lambda params: torch.optim.SGD(params, lr=LR),
        loss_fn=_loss,
        batches=batches,
        eval_fn=eval_fn,
        seed=seed,
        steps=STEPS,
        name="mf_ratings",
        description=(__doc__ or "").splitlines()[0],
        target_loss=TARGET_LOSS,
        default_clipper={"name": "norm", "max_norm": 1.0},
    )
