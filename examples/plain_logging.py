"""The clipping metrics in a plain PyTorch loop, at one host sync per logging interval.

``ClipMonitor`` adds each step's ``ClipResult`` up on the device and turns the interval into
numbers (pre-clip norm mean and max, threshold, clipped and skipped fractions) only every
``every`` steps; the sink is a ``torch.utils.tensorboard.SummaryWriter`` when tensorboard is
installed, else any callable (here: print). Runs in a few seconds on a CPU:

    python examples/plain_logging.py
"""

import tempfile

import torch
from sklearn.datasets import load_digits
from torch import nn

import autoclip
from autoclip.monitor import ClipMonitor

torch.set_num_threads(1)
torch.manual_seed(0)

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32)
x = (x - x.mean(0)) / (x.std(0) + 1e-6)
y = torch.tensor(digits.target)
batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 1536, 64)]
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
clipper = autoclip.create_clipper("quantile", quantile=0.5, window=50)


def show(metrics, step):
    print(f"step {step:3d}: " + "  ".join(f"{k.split('/')[1]}={v:.3g}" for k, v in metrics.items()))


try:
    from torch.utils.tensorboard import SummaryWriter

    sink = SummaryWriter(tempfile.mkdtemp())  # `tensorboard --logdir` that folder
    print(f"writing to {sink.log_dir}")
except ImportError:  # tensorboard is not installed: any callable (metrics, step) will do
    sink = show

monitor = ClipMonitor(every=24, sink=sink)
step = 0
for _epoch in range(4):
    for inputs, targets in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        result = clipper(model.parameters())  # tensors: no sync here...
        optimizer.step()
        monitor.update(result, step)  # ...nor here, except on every 24th call
        step += 1
