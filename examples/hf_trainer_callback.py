"""autoclip inside the Hugging Face Trainer: one callback measures, clips, logs and checkpoints.

``AutoClipCallback(None).add_to(trainer)`` runs ``autoclip.suggest`` on the Trainer's own model,
optimizer and training batches when training begins (and restores them), then clips every
optimizer step with the recommended clipper in ``on_pre_optimizer_step``; the Trainer's own
clipping is off (``max_grad_norm=0``). Its metrics land in every training log, so the
``report_to`` reporters (TensorBoard, W&B...) get them; its state is saved in each
checkpoint and read back on resume. A one-layer GPT-2 built from its config (no download) on
a character-level text; about fifteen seconds on a CPU:

    python examples/hf_trainer_callback.py
"""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from autoclip.integrations.transformers import AutoClipCallback  # noqa: E402

torch.set_num_threads(1)

text = (
    "autoclip measures the gradients of your model, proposes a clipping threshold, "
    "and clips every step with it; the trainer never waits for a number it does not log. "
) * 20
vocab = sorted(set(text))
ids = torch.tensor([vocab.index(c) for c in text])
windows = ids[: len(ids) // 32 * 32].view(-1, 32)  # [n, 32] token windows
train = [{"input_ids": w, "labels": w} for w in windows]

torch.manual_seed(0)
model = GPT2LMHeadModel(
    GPT2Config(
        vocab_size=len(vocab),
        n_positions=32,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
)

# --- the part that is about autoclip ------------------------------------------------------
args = TrainingArguments(
    output_dir=tempfile.mkdtemp(),
    max_grad_norm=0,  # the Trainer's own clipping off: the callback clips
    max_steps=60,
    per_device_train_batch_size=8,
    learning_rate=3e-3,
    logging_steps=10,
    save_steps=30,  # checkpoints carry autoclip_clipper.pt
    report_to="none",  # or "tensorboard", "wandb": they get the autoclip/* keys too
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(model=model, args=args, train_dataset=train)
clip = AutoClipCallback(None, suggest_steps=40).add_to(trainer)  # None: suggest first
trainer.train()
# ------------------------------------------------------------------------------------------

print(clip.proposal_.summary())
print(f"\nclipped with {clip.clipper!r}: {int(clip.clipper.clipped)} of {int(clip.clipper.steps)}")
print("\nstep  loss   pre-clip norm (mean, max)  threshold  clipped")
for log in trainer.state.log_history:
    if "autoclip/grad_norm" in log:
        print(
            f"{log['step']:4d}  {log['loss']:.3f}  {log['autoclip/grad_norm']:9.3f}"
            f" {log['autoclip/grad_norm_max']:9.3f}  {log['autoclip/threshold']:13.3f}"
            f"  {log['autoclip/clipped_frac']:7.0%}"
        )
