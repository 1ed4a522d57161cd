"""AutoClipCallback inside a real lightning.pytorch Trainer (CPU, a tiny model, seconds)."""

import math

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

import autoclip  # noqa: E402
from autoclip.errors import ConfigError  # noqa: E402
from autoclip.integrations.lightning import AutoClipCallback  # noqa: E402

N_BATCHES = 4  # batches per epoch


class Regression(pl.LightningModule):
    """A linear regression at a learning rate high enough that its gradients stay large."""

    def __init__(self, fused: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.fused = fused

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x)
        self.out_dtype = out.dtype  # bf16 under precision="bf16-mixed": autocast is on
        loss = nn.functional.mse_loss(out.float(), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        if self.fused:
            return torch.optim.AdamW(self.parameters(), lr=1e-2, fused=True)
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loader():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_BATCHES * 16, 8, generator=g)
    y = 10 * x.sum(1, keepdim=True)  # large targets: large gradients, clipped every step
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=16, shuffle=False)


class GradNorms(pl.Callback):
    """Records the global grad norm each optimizer step, where it sits in the callback list."""

    def __init__(self):
        self.norms = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(torch.nn.utils.get_total_norm(grads).item())


class Recorder(pl.loggers.Logger):
    """A logger that keeps what it is given."""

    def __init__(self):
        super().__init__()
        self.rows = []

    @property
    def name(self):
        return "recorder"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))


def trainer(callbacks, tmp_path, **kw):
    kw.setdefault("max_epochs", 2)
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_clips_every_step_to_the_threshold_and_logs_the_pre_clip_norm(tmp_path, precision):
    before, after, logger = GradNorms(), GradNorms(), Recorder()
    cb = AutoClipCallback(autoclip.create_clipper("norm", max_norm=0.5))
    t = trainer(
        [before, cb, after], tmp_path, precision=precision, logger=logger, log_every_n_steps=2
    )
    module = Regression()
    t.fit(module, loader())
    assert module.out_dtype == (torch.bfloat16 if precision == "bf16-mixed" else torch.float32)
    steps = 2 * N_BATCHES
    assert len(before.norms) == len(after.norms) == steps
    assert min(before.norms) > 0.5  # clipping really had work to do every step
    assert max(after.norms) <= 0.5 * (1 + 1e-3)
    assert int(cb.clipper.steps) == steps and int(cb.clipper.clipped) == steps
    rows = [(s, m) for s, m in logger.rows if "autoclip/grad_norm" in m]
    # One row per interval of two optimizer steps, at Lightning's own step numbers.
    assert [s for s, _ in rows] == [1, 3, 5, 7]
    train_steps = sorted({s for s, m in logger.rows if "train_loss" in m})
    assert train_steps == [1, 3, 5, 7]
    for i, (_, m) in enumerate(rows):
        pair = before.norms[2 * i : 2 * i + 2]
        assert m["autoclip/grad_norm"] == pytest.approx(sum(pair) / 2, rel=1e-4)
        assert m["autoclip/grad_norm_max"] == pytest.approx(max(pair), rel=1e-4)
        assert m["autoclip/threshold"] == pytest.approx(0.5)
        assert m["autoclip/clipped_frac"] == 1.0 and m["autoclip/skipped_frac"] == 0.0


def test_fused_optimizer_with_a_grad_scaler_is_unscaled_before_clipping(tmp_path):
    # fp16 AMP uses a GradScaler (on CPU only through an explicit plugin: precision="16-mixed"
    # falls back to bf16 there). A fused AdamW unscales inside its step, so Lightning hands
    # the hook scaled gradients; the clipper must see, and clip, the true ones.
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)  # small enough not to overflow
    amp = pl.plugins.precision.MixedPrecision("16-mixed", "cpu", scaler=scaler)
    ref, after, logger = GradNorms(), GradNorms(), Recorder()
    cb = AutoClipCallback(autoclip.create_clipper("norm", max_norm=0.5), log_every_n_steps=1)
    t = trainer([cb, after], tmp_path, plugins=[amp], max_epochs=1, logger=logger)
    t.fit(Regression(fused=True), loader())
    trainer([ref], tmp_path / "ref", max_epochs=1, logger=False).fit(Regression(), loader())
    assert float(scaler.get_scale()) == 256.0  # the gradients were scaled, and none overflowed
    # yet the first pre-clip norm is the fp32 one (same weights, same batch), not 256x it
    first = next(m["autoclip/grad_norm"] for _, m in logger.rows if "autoclip/grad_norm" in m)
    assert first == pytest.approx(ref.norms[0], rel=2e-2)
    assert max(after.norms) <= 0.5 * (1 + 1e-3)
    assert int(cb.clipper.steps) == N_BATCHES


def test_resume_restores_the_clipper_state(tmp_path):
    def clipper():
        return autoclip.create_clipper("quantile", quantile=0.5, window=6)

    # The uninterrupted run: two epochs; a checkpoint after the first.
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)
    full = AutoClipCallback(clipper())
    trainer([full, ckpt], tmp_path, logger=False).fit(Regression(), loader())
    first_epoch = sorted((tmp_path / "ckpt").glob("epoch=0*.ckpt"))
    assert len(first_epoch) == 1

    class AtStart(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.state = resumed.clipper.state_dict()

    resumed, at_start = AutoClipCallback(clipper()), AtStart()
    t = trainer([resumed, at_start], tmp_path, logger=False)
    t.fit(Regression(), loader(), ckpt_path=first_epoch[0])
    saved = torch.load(first_epoch[0], weights_only=False)["callbacks"]["AutoClipCallback"]
    assert int(at_start.state["state"]["steps"]) == N_BATCHES  # steps seen before the resume
    for k, v in saved["clipper"]["state"].items():
        torch.testing.assert_close(at_start.state["state"][k], v, equal_nan=True)
    # and it goes on exactly as the uninterrupted run did
    for k, v in full.clipper.state_dict()["state"].items():
        torch.testing.assert_close(resumed.clipper.state_dict()["state"][k], v, equal_nan=True)


def test_suggestion_leaves_model_and_optimizer_as_they_were_and_attaches_a_clipper(tmp_path):
    class Snapshot(pl.Callback):
        """Before and after the suggestion (which runs first, in on_train_start)."""

        def on_fit_start(self, trainer, pl_module):
            self.before = _snapshot(pl_module, trainer.optimizers[0])

        def on_train_start(self, trainer, pl_module):
            self.after = _snapshot(pl_module, trainer.optimizers[0])

    cb, snap, logger = AutoClipCallback(None, suggest_steps=12), Snapshot(), Recorder()
    trainer([cb, snap], tmp_path, max_epochs=1, logger=logger).fit(Regression(), loader())
    assert isinstance(cb.clipper, autoclip.BaseClipper)
    assert isinstance(cb.proposal_, autoclip.Proposal)
    assert int(cb.clipper.steps) == N_BATCHES  # it clipped the run's steps, not the probe's
    _assert_same(snap.before, snap.after)
    # the probe's own training_step calls did not log
    assert all(step is not None and step < N_BATCHES for step, _ in logger.rows)


def test_resume_of_a_suggested_run_reuses_its_clipper(tmp_path):
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)
    first = AutoClipCallback(None, suggest_steps=8)
    trainer([first, ckpt], tmp_path, max_epochs=1, logger=False).fit(Regression(), loader())
    again = AutoClipCallback(None, suggest_steps=8)
    path = next((tmp_path / "ckpt").glob("*.ckpt"))
    trainer([again], tmp_path, logger=False).fit(Regression(), loader(), ckpt_path=path)
    assert again.proposal_ is None  # no second suggestion
    assert again.clipper.config == first.clipper.config
    assert int(again.clipper.steps) == 2 * N_BATCHES


def test_gradient_clip_val_is_refused_with_a_clear_message(tmp_path):
    cb = AutoClipCallback(autoclip.create_clipper("norm", max_norm=1.0))
    t = trainer([cb], tmp_path, gradient_clip_val=1.0, logger=False)
    with pytest.raises(ConfigError, match=r"gradient_clip_val=1.0.*remove gradient_clip_val"):
        t.fit(Regression(), loader())


def test_bad_clipper_is_refused():
    with pytest.raises(ConfigError, match="clipper must be an autoclip clipper"):
        AutoClipCallback(1.0)


def _snapshot(module, optimizer):
    return (
        {k: v.detach().clone() for k, v in module.state_dict().items()},
        {k: torch.as_tensor(v).clone() for k, v in _flat(optimizer.state_dict()).items()},
    )


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            out.update(_flat(dict(enumerate(v)), f"{prefix}{k}."))
        elif isinstance(v, torch.Tensor | int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out


def _assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)


def test_a_module_that_clips_in_configure_gradient_clipping_is_refused(tmp_path):
    class ClipsItself(Regression):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val, algorithm):
            self.clip_gradients(optimizer, 1.0, "norm")

    cb = AutoClipCallback(autoclip.create_clipper("norm", max_norm=1.0))
    with pytest.raises(ConfigError, match="overrides configure_gradient_clipping"):
        trainer([cb], tmp_path, logger=False).fit(ClipsItself(), loader())


def test_two_optimizers_are_refused(tmp_path):
    class TwoOptimizers(Regression):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            for opt in self.optimizers():
                opt.zero_grad()
                self.manual_backward(super().training_step(batch, batch_idx))
                opt.step()

        def configure_optimizers(self):
            return [torch.optim.SGD(m.parameters(), lr=0.01) for m in self.net if m._parameters]

    cb = AutoClipCallback(autoclip.create_clipper("norm", max_norm=1.0))
    with pytest.raises(ConfigError, match="clips one optimizer's gradients, but the module"):
        trainer([cb], tmp_path, logger=False).fit(TwoOptimizers(), loader())


def test_a_non_finite_step_changes_neither_weights_nor_momentum(tmp_path):
    class NanAtTwo(Regression):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * math.nan if self.global_step == 2 else loss

    class AroundStepTwo(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2:
                self.before = _snapshot(pl_module, trainer.optimizers[0])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                self.after = _snapshot(pl_module, trainer.optimizers[0])

    cb, around, logger = (
        AutoClipCallback(autoclip.create_clipper("norm", max_norm=0.5)),
        AroundStepTwo(),
        Recorder(),
    )
    t = trainer([cb, around], tmp_path, max_epochs=1, logger=logger, log_every_n_steps=4)
    t.fit(NanAtTwo(), loader())
    assert int(cb.clipper.skipped) == 1
    assert len(around.before[1]) > 0  # momentum buffers exist, and did not move
    _assert_same(around.before, around.after)
    (row,) = [m for _, m in logger.rows if "autoclip/skipped_frac" in m]
    assert row["autoclip/skipped_frac"] == 0.25
