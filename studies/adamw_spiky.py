"""Post-LN causal transformer LM with AdamW, a high learning rate and no warm-up.

Why it is here: the regime ZClip was made for. Adam's second-moment estimate starts from the
first few gradients; without a learning-rate warm-up, a large early gradient meets a small
running estimate and the update is far too big. A post-LN transformer (the original
Transformer's and BERT's layout, the one known to need warm-up: Xiong et al. 2020) is the
sensitive case: unclipped, the loss bumps up early and then stalls near the unigram level
(about 3.2 nats, in our runs), where a norm clip reaches about 2.3. Under Adam a hard clip
slows little (the update is divided by the gradient scale anyway), so the question is where
the threshold stops mattering, and whether a rule picks one that still catches the bumps.

* Model: :class:`autoclip_studies.sgd_transformer.CausalLM`, post-LN (2 blocks, width 64).
* Data: the CPython help text (``_data.py``), ``BATCH_SIZE`` windows of 32 characters at
  random offsets from the task's seed; the last 10 % held out.
* Optimiser: AdamW, lr ``LR``, betas (0.9, 0.95), weight decay 0.1, no warm-up, no decay.
* Metric: ``eval_fn`` is the held-out cross-entropy in nats per character.
* Budget: ``STEPS`` optimizer steps, about 2 s of CPU time (one thread).
* Default clipper: global norm 1.0, the transformer convention.
"""

from __future__ import annotations

import torch

from autoclip.task import Task
from autoclip_studies.sgd_transformer import CausalLM, lm_task

LR = 1e-2  # ten times nanoGPT's shakespeare_char, with no warm-up: the early steps overshoot
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1
STEPS = 200
NORM_FIRST = False  # post-LN, as in the original Transformer and BERT: the one that needs warm-up
TARGET_LOSS = 2.6


def make_task(seed: int = 0) -> Task:
    """The spiky-AdamW task; ``seed`` fixes the initial weights and the training windows."""
    return lm_task(
        "adamw_spiky",
        seed,
        lambda params: torch.optim.AdamW(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY),
        steps=STEPS,
        target=TARGET_LOSS,
        doc=__doc__ or "",
        model_fn=_model,
    )


def _model() -> CausalLM:
    return CausalLM(norm_first=NORM_FIRST)
