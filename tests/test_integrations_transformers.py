"""AutoClipCallback inside a real transformers.Trainer: a one-layer GPT-2 built from its config
(no download), on CPU, in seconds."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

import autoclip  # noqa: E402
from autoclip.errors import ConfigError  # noqa: E402
from autoclip.integrations.transformers import STATE_FILE, AutoClipCallback  # noqa: E402

STEPS = 8
THRESHOLD = 0.5


class Tokens(torch.utils.data.Dataset):
    """Random token sequences; the labels are the inputs (the model shifts them)."""

    def __init__(self, n=32, length=12, vocab=64):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=64,
        n_positions=16,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


def args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_grad_norm=0,
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    base.update(kw)
    return transformers.TrainingArguments(**base)


class GradNorms(transformers.TrainerCallback):
    """The global grad norm in on_pre_optimizer_step, where it sits in the callback order."""

    def __init__(self):
        self.norms = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.norms.append(torch.nn.utils.get_total_norm(grads).item())


class Logs(transformers.TrainerCallback):
    """What a reporter after the callback (TensorBoard, W&B) is handed."""

    def __init__(self):
        self.rows = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.rows.append((state.global_step, dict(logs)))


def fit(tmp_path, clipper, *, before=None, extra=(), resume=None, **kw):
    reporter, net = Logs(), model()
    dtypes = set()  # of the logits: bf16 when the Trainer's autocast is on
    net.lm_head.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
    trainer = transformers.Trainer(
        model=net,
        args=args(tmp_path, **kw),
        train_dataset=Tokens(),
        callbacks=[*extra, reporter],
    )
    cb = AutoClipCallback(clipper).add_to(trainer)
    if before is not None:
        trainer.callback_handler.callbacks.insert(0, before)
    trainer.train(resume_from_checkpoint=resume)
    trainer.logits_dtypes = dtypes
    return trainer, cb, reporter


@pytest.mark.parametrize("bf16", [False, True])
def test_clips_every_step_to_the_threshold_and_logs_the_pre_clip_norm(tmp_path, bf16):
    before, after = GradNorms(), GradNorms()
    clipper = autoclip.create_clipper("norm", max_norm=THRESHOLD)
    trainer, cb, reporter = fit(tmp_path, clipper, before=before, extra=[after], bf16=bf16)
    assert trainer.logits_dtypes == {torch.bfloat16 if bf16 else torch.float32}
    assert len(before.norms) == len(after.norms) == STEPS
    assert min(before.norms) > THRESHOLD  # there was clipping to do on every step
    assert max(after.norms) <= THRESHOLD * (1 + 1e-3)
    assert int(cb.clipper.steps) == int(cb.clipper.clipped) == STEPS
    rows = [(s, m) for s, m in reporter.rows if "autoclip/grad_norm" in m]
    assert [s for s, _ in rows] == [2, 4, 6, 8]  # every logging_steps
    for i, (_, m) in enumerate(rows):
        pair = before.norms[2 * i : 2 * i + 2]
        assert m["autoclip/grad_norm"] == pytest.approx(sum(pair) / 2, rel=1e-4)
        assert m["autoclip/grad_norm_max"] == pytest.approx(max(pair), rel=1e-4)
        assert m["autoclip/threshold"] == pytest.approx(THRESHOLD)
        assert m["autoclip/clipped_frac"] == 1.0 and m["autoclip/skipped_frac"] == 0.0
        # The Trainer's own grad_norm (last step of the interval) is the pre-clip norm too.
        assert m["grad_norm"] == pytest.approx(pair[-1], rel=1e-4)
    history = [h for h in trainer.state.log_history if "autoclip/grad_norm" in h]
    assert len(history) == 4


def test_resume_restores_the_clipper_state(tmp_path):
    def clipper():
        return autoclip.create_clipper("quantile", quantile=0.5, window=6)

    kw = dict(save_strategy="steps", save_steps=4)
    _, full, _ = fit(tmp_path / "full", clipper(), **kw)
    half = tmp_path / "full" / "checkpoint-4"
    saved = torch.load(half / STATE_FILE, weights_only=True)
    assert int(saved["state"]["steps"]) == 4  # steps seen when the checkpoint was written

    class AtBegin(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.state = cb_ref[0].clipper.state_dict()

    cb_ref, at_begin = [], AtBegin()
    trainer = transformers.Trainer(
        model=model(), args=args(tmp_path / "full", **kw), train_dataset=Tokens()
    )
    resumed = AutoClipCallback(clipper()).add_to(trainer)
    cb_ref.append(resumed)
    trainer.add_callback(at_begin)  # runs after the callback's own on_train_begin
    trainer.train(resume_from_checkpoint=str(half))
    assert resumed.resumed_from_ == str(half / STATE_FILE)
    for k, v in saved["state"].items():  # the window and the counters, as they were
        torch.testing.assert_close(at_begin.state["state"][k], v, equal_nan=True)
    for k, v in full.clipper.state_dict()["state"].items():  # and it went on identically
        torch.testing.assert_close(resumed.clipper.state_dict()["state"][k], v, equal_nan=True)


def test_suggestion_leaves_model_and_optimizer_as_they_were_and_attaches_a_clipper(tmp_path):
    class Snapshot(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
            self.snap = (
                {k: v.detach().clone() for k, v in model.state_dict().items()},
                [dict(g) for g in optimizer.param_groups],
                len(optimizer.state),
            )

    first, last = Snapshot(), Snapshot()
    trainer = transformers.Trainer(
        model=model(), args=args(tmp_path), train_dataset=Tokens(), callbacks=[last]
    )
    cb = AutoClipCallback(None, suggest_steps=10).add_to(trainer)
    trainer.callback_handler.callbacks.insert(0, first)  # before the suggestion
    trainer.train()
    assert isinstance(cb.proposal_, autoclip.Proposal)
    assert isinstance(cb.clipper, autoclip.BaseClipper)
    assert int(cb.clipper.steps) == STEPS  # the run's steps, not the probe's
    (w0, g0, n0), (w1, g1, n1) = first.snap, last.snap
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0)
    assert n0 == n1 == 0  # no optimizer state left behind
    assert [{k: v for k, v in g.items() if k != "params"} for g in g0] == [
        {k: v for k, v in g.items() if k != "params"} for g in g1
    ]


def test_max_grad_norm_is_refused_with_a_clear_message(tmp_path):
    trainer = transformers.Trainer(
        model=model(), args=args(tmp_path, max_grad_norm=1.0), train_dataset=Tokens()
    )
    AutoClipCallback(autoclip.create_clipper("norm", max_norm=1.0)).add_to(trainer)
    with pytest.raises(ConfigError, match=r"max_grad_norm=1.0.*set max_grad_norm=0"):
        trainer.train()


def test_add_to_puts_the_callback_first(tmp_path):
    trainer = transformers.Trainer(model=model(), args=args(tmp_path), train_dataset=Tokens())
    cb = AutoClipCallback(autoclip.create_clipper("norm", max_norm=1.0))
    trainer.add_callback(cb)
    assert cb.add_to(trainer) is cb
    assert trainer.callback_handler.callbacks[0] is cb
    assert trainer.callback_handler.callbacks.count(cb) == 1


def test_resuming_without_the_state_file_warns(tmp_path):
    fit(
        tmp_path, autoclip.create_clipper("norm", max_norm=1.0), save_strategy="steps", save_steps=4
    )
    (tmp_path / "checkpoint-4" / STATE_FILE).unlink()
    trainer = transformers.Trainer(model=model(), args=args(tmp_path), train_dataset=Tokens())
    AutoClipCallback(autoclip.create_clipper("norm", max_norm=1.0)).add_to(trainer)
    with pytest.warns(UserWarning, match="no autoclip_clipper.pt"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(deepspeed="ds.json"), "DeepSpeed clips inside its engine"),
        (dict(fsdp=True, fsdp_config={"version": 1}), "FSDP v1"),
    ],
)
def test_engines_that_clip_or_shard_are_refused(bad, match):
    # DeepSpeed and FSDP need their packages and several processes to build real
    # TrainingArguments, so the check sees a stand-in with the same fields.
    from types import SimpleNamespace

    from autoclip.integrations.transformers import _check_args

    fields = dict(max_grad_norm=0, fp16=False, deepspeed=None, fsdp=False, fsdp_config=None)
    fields.update(bad)
    with pytest.raises(ConfigError, match=match):
        _check_args(SimpleNamespace(**fields))


def test_a_non_finite_step_changes_neither_weights_nor_adam_state(tmp_path):
    net = model()
    calls = []

    def nan_on_third_step(module, inputs, out):  # one micro-batch per step here
        calls.append(1)
        return out * float("nan") if len(calls) == 3 else out

    net.lm_head.register_forward_hook(nan_on_third_step)

    class AroundStepThree(transformers.TrainerCallback):
        def _snap(self, model, optimizer):
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            moments = [
                t.clone() for s in optimizer.state.values() for t in s.values() if t.dim() > 0
            ]
            steps = [float(s["step"]) for s in optimizer.state.values()]
            return state, moments, steps

        def on_step_begin(self, args, state, control, model=None, optimizer=None, **kw):
            if state.global_step == 2:
                self.before = self._snap(model, optimizer)

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
            if state.global_step == 3:
                self.after = self._snap(model, optimizer)

    around = AroundStepThree()
    trainer = transformers.Trainer(
        model=net, args=args(tmp_path), train_dataset=Tokens(), callbacks=[around]
    )
    cb = AutoClipCallback(autoclip.create_clipper("norm", max_norm=THRESHOLD)).add_to(trainer)
    trainer.train()
    assert int(cb.clipper.skipped) == 1
    (w0, m0, s0), (w1, m1, s1) = around.before, around.after
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0)
    assert len(m0) > 0 and s0 == s1  # Adam's step counts did not move, nor its moments
    for a, b in zip(m0, m1, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    skipped = [h["autoclip/skipped_frac"] for h in trainer.state.log_history if "loss" in h]
    assert skipped[1] == 0.5  # steps 3 and 4 are the second logging interval
