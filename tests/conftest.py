"""Shared test settings."""

import torch

# One intra-op thread: the tests' tensors are tiny, and on a busy 2-core machine a second
# thread makes small ops wait on each other (seconds instead of milliseconds).
torch.set_num_threads(1)
