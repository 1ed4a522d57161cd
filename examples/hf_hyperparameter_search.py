"""Tuning the clipper inside ``Trainer.hyperparameter_search`` (backend Optuna).

``autoclip.suggest`` measures a fresh model once. The search then samples, per trial, the
learning rate (``hp_space``) and a clipper (``autoclip.suggest_clipper(trial, proposal)``,
called from ``model_init``, which the Trainer hands the Optuna trial), and the one
``AutoClipCallback`` clips that trial's training with it. Six short trials of a one-layer
GPT-2 built from its config (no download) on a character-level text; well under a minute on
a CPU:

    python examples/hf_hyperparameter_search.py
"""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import optuna  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
    default_data_collator,  # noqa: E402
)

import autoclip  # noqa: E402
from autoclip.integrations.transformers import AutoClipCallback  # noqa: E402

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.WARNING)

text = (
    "the trainer clips every step with the clipper this trial sampled, and the study keeps "
    "the setting whose held-out loss is lowest; a diverged trial never becomes the answer. "
) * 24
vocab = sorted(set(text))
ids = torch.tensor([vocab.index(c) for c in text])
windows = ids[: len(ids) // 32 * 32].view(-1, 32)  # [n, 32]
data = [{"input_ids": w, "labels": w} for w in windows]
train, held_out = data[:-8], data[-8:]
config = GPT2Config(
    vocab_size=len(vocab),
    n_positions=32,
    n_embd=32,
    n_layer=1,
    n_head=2,
    bos_token_id=0,
    eos_token_id=0,
)

# Measure once, before the search: a fresh model, an optimizer like the Trainer's, the data.
torch.manual_seed(0)
probe_model = GPT2LMHeadModel(config)
proposal = autoclip.suggest(
    probe_model,
    torch.optim.AdamW(probe_model.parameters(), lr=3e-3),
    lambda m, batch: m(**batch).loss,
    torch.utils.data.DataLoader(train, batch_size=8, collate_fn=default_data_collator),
    steps=40,
)
print(f"autoclip recommends {proposal.recommended.describe()}")

clip = AutoClipCallback(proposal.clipper())  # each trial replaces the clipper below


def model_init(trial):
    if trial is not None:  # None when the Trainer is built, before the search
        clip.clipper = autoclip.suggest_clipper(trial, proposal, strategies=("norm", "zscore"))
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


def hp_space(trial: optuna.Trial) -> dict:
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True)}


args = TrainingArguments(
    output_dir=tempfile.mkdtemp(),
    max_grad_norm=0,  # the callback clips
    max_steps=40,
    per_device_train_batch_size=8,
    eval_strategy="steps",
    eval_steps=20,
    logging_steps=20,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(model_init=model_init, args=args, train_dataset=train, eval_dataset=held_out)
clip.add_to(trainer)
best = trainer.hyperparameter_search(
    direction="minimize",
    backend="optuna",
    hp_space=hp_space,
    n_trials=6,
    sampler=optuna.samplers.TPESampler(seed=0),
)
print(f"best held-out loss {best.objective:.4f} with {best.hyperparameters}")
