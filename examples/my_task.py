"""A user's own task file, for the command line and for a search from Python.

    autoclip probe examples/my_task.py:make_task
    autoclip tune examples/my_task.py:make_task --trials 6 --storage :memory:
    python examples/my_task.py          # the same search from Python, in memory

``make_task`` returns an ``autoclip.Task``: how to build the model and its optimizer from
scratch, the loss of one batch, a re-iterable list of batches and (optionally) a held-out loss.
Here: a small GRU that learns to sum a noisy sequence, trained with SGD at a learning rate
high enough that its gradients spike now and then.
"""

import torch
from torch import nn

import autoclip


class SumGRU(nn.Module):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.rnn = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):  # x: [batch, time, 1] -> [batch, 1]
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _batches(seed: int, n: int, length: int = 20, size: int = 32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(size, length, 1, generator=g)
        out.append((x, x.sum(dim=1) / length**0.5))  # target has unit variance
    return out


def _mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def make_task(seed: int = 0) -> autoclip.Task:
    held_out = _batches(seed + 1000, 4)

    def eval_fn(model):
        return sum(float(_mse(model, b)) for b in held_out) / len(held_out)

    return autoclip.Task(
        model_fn=SumGRU,
        optimizer_fn=lambda params: torch.optim.SGD(params, lr=0.5, momentum=0.9),
        loss_fn=_mse,
        batches=_batches(seed, 20),
        eval_fn=eval_fn,
        seed=seed,
        steps=100,
        name="sum_gru",
        description="GRU summing a noisy sequence, SGD at a high learning rate",
    )


if __name__ == "__main__":
    result = autoclip.tune(make_task(), n_trials=6)
    print(autoclip.report.format_tune(result))
