"""One call before training: measure the gradients, get a clipper, attach it, train.

``autoclip.suggest`` measures how *your* model, with *your* optimizer and data, responds to
the clipping threshold: a short warm-up (50 steps), then short races of candidate max_norm
values from the same start (500 optimizer steps in all by default; ``budget=`` to change).
It prints nothing, changes nothing (weights, optimizer state and random state are restored
exactly), and returns a proposal whose ``clipper()`` is ready to attach.
``loss_fn(model, batch)`` returns the scalar training loss of one batch.

The model here is a deep ReLU MLP without normalisation on scikit-learn's bundled digits,
trained by SGD with momentum at a high learning rate: the kind of model whose early gradients
spike. Runs in a few seconds on a CPU:

    python examples/suggest_before_training.py
"""

import torch
from sklearn.datasets import load_digits
from torch import nn

import autoclip

torch.manual_seed(0)

# --- your usual setup -----------------------------------------------------------------------
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32)
x = (x - x.mean(0)) / (x.std(0) + 1e-6)
y = torch.tensor(digits.target)
batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 1536, 64)]  # a re-iterable list
x_test, y_test = x[1536:], y[1536:]

layers = [nn.Linear(64, 128), nn.ReLU()]
for _ in range(6):
    layers += [nn.Linear(128, 128), nn.ReLU()]
model = nn.Sequential(*layers, nn.Linear(128, 10))
for m in model:
    if isinstance(m, nn.Linear):  # He init, zero biases, no normalisation anywhere
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.zeros_(m.bias)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def loss_fn(model, batch):  # (model, one item of batches) -> scalar tensor
    inputs, targets = batch
    return nn.functional.cross_entropy(model(inputs), targets)


# --- the one call ---------------------------------------------------------------------------
proposal = autoclip.suggest(model, optimizer, loss_fn, batches)
print(proposal.summary())
clipper = proposal.clipper()  # the recommended one; proposal.clipper("zscore") for another
clipper.attach(optimizer)  # clips before every optimizer.step()

# --- your usual training loop, unchanged ------------------------------------------------------
for epoch in range(10):
    for batch in batches:
        optimizer.zero_grad()
        loss_fn(model, batch).backward()
        optimizer.step()
    with torch.no_grad():
        test_loss = nn.functional.cross_entropy(model(x_test), y_test).item()
    print(f"epoch {epoch}: held-out loss {test_loss:.3f}")
print(f"clipped {int(clipper.clipped)} of {int(clipper.steps)} steps")

# The warm-up's gradient statistics: print(proposal.stats.summary())
# To keep the report and its plots, the response curve included (needs matplotlib):
#   autoclip.report.write_probe_report(proposal, "autoclip-out")
