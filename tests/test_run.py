"""dpm.app.train end to end on the Swiss roll with a tiny budget: train, checkpoint, resume, evaluate, bad input
(unreadable checkpoints and every other refused setting: tests/test_faults.py)."""

import csv
import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from dpm.app.evaluate import evaluate
from dpm.app.checkpoint import load_checkpoint, renamed_targets
from dpm.app.train import train
from dpm.app.compose import compose
from dpm.errors import Interrupted

TINY = ["trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.enable_progress_bar=false",
        "dataset.n_train=256", "dataset.n_val=64", "dataset.n_test=64", "dataset.batch_size=64", "T=8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests of this file."""
    out = tmp_path_factory.mktemp("run")
    cfg = compose(TINY)
    metrics = train(cfg, out)
    return cfg, out, metrics


def eval_cfg(compose_cfg, ckpt, *overrides):
    return compose_cfg([f"ckpt_path={ckpt}", *overrides], config_name="evaluate")


def test_train_writes_the_run_directory(trained):
    cfg, out, metrics = trained
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "config.yaml").is_file() and (out / "samples.png").is_file()
    rows = list(csv.DictReader(open(out / "logs" / "metrics.csv")))
    val = [r for r in rows if r["val/K"]]
    assert [int(r["step"]) for r in val] == [2, 5]  # a validation every 3 of the 6 steps (logged 0-based)
    assert metrics["val/K"] == pytest.approx(float(val[-1]["val/K"]))  # what train returns is the last one
    test_row = next(r for r in rows if r["test/K"])
    assert metrics["test/K"] == pytest.approx(float(test_row["test/K"]))
    assert json.loads((out / "eval.json").read_text())["K"] == pytest.approx(metrics["test/K"])
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")  # weights_only=True
    assert ckpt["global_step"] == 6 and ckpt["dpm_config"]["T"] == 8


def test_evaluate_restores_everything_from_the_checkpoint(trained, compose_cfg, tmp_path):
    _, out, _ = trained
    result = evaluate(eval_cfg(compose_cfg, out / "checkpoints" / "last.ckpt"), tmp_path)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert result.pop("eval") == str(tmp_path / "eval.json")
    assert saved == json.loads(json.dumps(result))  # eval.json holds the result as returned (strict JSON, nested)
    for key in ("dataset", "diffusion", "T", "split", "estimator", "n_examples", "K", "K_stderr", "L_null",
                "K_minus_L_null", "unit", "K_bits_per_dim", "weights", "seconds"):
        assert key in saved
    assert saved["dataset"] == "swiss_roll" and saved["diffusion"] == "gaussian" and saved["T"] == 8
    assert saved["n_examples"] == 64 and saved["unit"] == "bits" and saved["weights"] == "raw"
    assert saved["K_minus_L_null"] == pytest.approx(saved["K"] - saved["L_null"], abs=1e-5)
    assert saved["K_bits_per_dim"] == pytest.approx(saved["K"] / 2)


def test_sample_task_draws_the_checkpoints_samples_at_its_seed(trained, compose_cfg, tmp_path):
    """task=sample's figure, pixel for pixel, is the figure of the checkpoint's own weights at seed=3; other weights
    give other pixels."""
    import numpy as np
    from PIL import Image

    from dpm.app.build import restore
    from dpm.figures import draw

    _, out, _ = trained
    ckpt = out / "checkpoints" / "last.ckpt"
    evaluate(eval_cfg(compose_cfg, ckpt, "task=sample", "seed=3", "ckpt_choice=given"), tmp_path / "task")
    dm, module, _ = restore(load_checkpoint(ckpt), "raw")
    dm.setup()
    pixels = lambda path: np.asarray(Image.open(path).convert("RGB"))
    figure = pixels(tmp_path / "task" / "samples.png")
    assert np.array_equal(figure, pixels(draw(module, dm, tmp_path / "same.png", seed=3)))
    with torch.no_grad():
        for p in module.net.parameters():
            p.mul_(0.5)
    assert not np.array_equal(figure, pixels(draw(module, dm, tmp_path / "other.png", seed=3)))


def test_a_checkpoint_of_the_flat_layout_still_loads(trained, compose_cfg, tmp_path):
    """Checkpoints written before the package was split into layers name dpm.gaussian.*, dpm.schedules.*,
    dpm.callbacks.*: they load, and give the very K of the same weights under the new names."""
    _, out, _ = trained
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    old = json.loads(json.dumps(ckpt["dpm_config"]).replace("dpm.core.", "dpm.").replace("dpm.model.", "dpm.")
                     .replace("dpm.figures.callbacks.", "dpm.callbacks."))
    assert old["diffusion"]["_target_"] == "dpm.gaussian.GaussianDiffusion"
    assert old["callbacks"]["figure"]["_target_"] == "dpm.callbacks.SampleFigure"
    assert renamed_targets(old)["callbacks"]["figure"]["_target_"] == "dpm.figures.callbacks.SampleFigure"
    assert renamed_targets(old)["callbacks"]["last"]["_target_"] == "dpm.model.callbacks.LastCheckpoint"
    between = {"_target_": "dpm.model.callbacks.ScheduleFigure"}  # the layered package before the figures moved
    assert renamed_targets(between)["_target_"] == "dpm.figures.callbacks.ScheduleFigure"
    torch.save({**ckpt, "dpm_config": old}, tmp_path / "old.ckpt")
    new_K = evaluate(eval_cfg(compose_cfg, out / "checkpoints" / "last.ckpt", "ckpt_choice=given"), tmp_path / "new")["K"]
    old_K = evaluate(eval_cfg(compose_cfg, tmp_path / "old.ckpt", "ckpt_choice=given"), tmp_path / "old")["K"]
    assert old_K == new_K


def test_resume_continues_from_the_checkpoint(trained, compose_cfg, tmp_path):
    _, out, _ = trained
    cfg = compose_cfg(TINY + ["trainer.max_steps=9", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"])
    train(cfg, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 9
    assert ckpt["optimizer_states"][0]["state"]  # the optimizer state came along


def test_bad_settings_fail_before_any_work(compose_cfg, tmp_path):
    with pytest.raises(ValueError, match="T=1"):
        train(compose_cfg(TINY + ["T=1"]), tmp_path)
    with pytest.raises(ValueError, match="dataset.batch_size=-4 is invalid"):
        train(compose_cfg(TINY + ["dataset.batch_size=-4"]), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_nonfinite_losses_are_skipped_then_stop_the_run(compose_cfg, tmp_path):
    cfg = compose_cfg(TINY + ["trainer.max_steps=50", "trainer.val_check_interval=50", "callbacks=minimal",
                              "logger=none", "test_at_end=false"])  # only the training steps: the stop comes first
    with open_dict(cfg):
        cfg.optimizer.lr = 1e30  # the first step makes every weight non-finite
    with pytest.raises(RuntimeError, match="non-finite .* in a row"):
        train(cfg, tmp_path)


def test_compiled_network_checkpoints_load_into_a_plain_one(compose_cfg):
    from dpm.app.build import build

    cfg = compose(TINY)
    _, plain = build(cfg)
    _, compiled = build(cfg)
    compiled.net = torch.compile(compiled.net)  # wraps only: keys gain "_orig_mod."
    with torch.no_grad():
        for p in compiled.parameters():
            p.add_(1.0)
    checkpoint = {"state_dict": compiled.state_dict()}
    assert any("_orig_mod" in k for k in checkpoint["state_dict"])
    plain.on_load_checkpoint(checkpoint)
    plain.load_state_dict(checkpoint["state_dict"])
    for (_, a), (_, b) in zip(plain.net.named_parameters(), compiled.net._orig_mod.named_parameters()):
        assert torch.equal(a, b)


def _weights_equal(a: Path, b: Path) -> None:
    first, second = (torch.load(p, weights_only=True) for p in (a, b))
    assert first["global_step"] == second["global_step"]
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key


@pytest.fixture(scope="module")
def straight_8(tmp_path_factory):
    """8 uninterrupted steps, 4 batches per epoch, a validation (and last.ckpt) every 2."""
    out = tmp_path_factory.mktemp("straight")
    train(compose(RESUME_BASE + ["trainer.max_steps=8"]), out)
    return out / "checkpoints" / "last.ckpt"


RESUME_BASE = TINY + ["trainer.val_check_interval=2", "callbacks=minimal", "logger=none", "test_at_end=false"]


@pytest.mark.parametrize("stop", [2, 3, 4, 5], ids=["at-a-validation", "mid-epoch", "epoch-boundary", "mid-epoch-2"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, straight_8, stop):
    """Weights, optimizer state, the keyed draws of t and noise and the data order all come back: stop + the rest
    == 8 steps, bit for bit, from a checkpoint written at a validation, mid-epoch or at an epoch's end (the
    training loader resumes mid-epoch, dpm.data.base.ResumableLoader)."""
    train(compose(RESUME_BASE + [f"trainer.max_steps={stop}"]), tmp_path / "first")
    first = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(first, weights_only=True)["global_step"] == stop
    train(compose(RESUME_BASE + ["trainer.max_steps=8", f"ckpt_path={first}"]), tmp_path / "resumed")
    _weights_equal(straight_8, tmp_path / "resumed" / "checkpoints" / "last.ckpt")


class SignalAt(L.Callback):
    """Sends this process SIGTERM while step `step` is trained (`during`: from its batch's start) or right after it
    (`after`: at its batch's end, past dpm's own batch-end hooks)."""

    def __init__(self, step: int, when: str) -> None:
        self.step, self.when = step, when

    def on_train_batch_start(self, trainer, *args) -> None:
        if self.when == "during" and trainer.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.when == "after" and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("step,when", [(4, "during"), (4, "after"), (3, "during")],
                         ids=["epoch-end", "after-epoch-end", "mid-epoch"])
def test_a_sigterm_at_any_step_resumes_to_the_uninterrupted_run(tmp_path, straight_8, step, when):
    """SIGTERM (or SLURM's warning signals, which stop the same way) in an epoch's last batch stops at the next
    epoch's start, elsewhere after its step; either way last.ckpt resumes bit for bit."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(Interrupted) as stopped:
            train(compose(RESUME_BASE + ["trainer.max_steps=8", "trust=[tests]", "+callbacks.stop._target_="
                                         "tests.test_run.SignalAt", f"+callbacks.stop.step={step}",
                                         f"+callbacks.stop.when={when}"]), tmp_path / "first")
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert stopped.value.exit_code == 143
    first = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(first, weights_only=True)["global_step"] == (step + 1 if step == 4 else step)
    train(compose(RESUME_BASE + ["trainer.max_steps=8", f"ckpt_path={first}", "trust=[tests]"]), tmp_path / "resumed")
    _weights_equal(straight_8, tmp_path / "resumed" / "checkpoints" / "last.ckpt")


def test_resume_with_importance_sampled_t_reproduces_the_uninterrupted_run(tmp_path):
    """t_sampling=importance: the sampler's estimates travel in last.ckpt (dpm_t_sampler), so a resumed run draws
    the t an uninterrupted one would, bit for bit; and they were updated (every t seen)."""
    importance = RESUME_BASE + ["t_sampling=importance", "T=6"]
    train(compose(importance + ["trainer.max_steps=8"]), tmp_path / "straight")
    train(compose(importance + ["trainer.max_steps=3"]), tmp_path / "first")
    first = tmp_path / "first" / "checkpoints" / "last.ckpt"
    saved = torch.load(first, weights_only=True)["dpm_t_sampler"]
    assert saved["seen"].sum().item() == 3 * 64 and (saved["seen"] > 0).all()  # 3 batches of 64, every t drawn
    train(compose(importance + ["trainer.max_steps=8", f"ckpt_path={first}"]), tmp_path / "resumed")
    straight, resumed = (tmp_path / d / "checkpoints" / "last.ckpt" for d in ("straight", "resumed"))
    _weights_equal(straight, resumed)
    a, b = (torch.load(p, weights_only=True)["dpm_t_sampler"] for p in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
