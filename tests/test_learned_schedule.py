"""The learned schedule (paper 2.4.1) after real training: valid betas, kept in the checkpoint, used by evaluate.py;
and the schedule figure (dpm.figures.schedule, dpm.figures.callbacks.ScheduleFigure)."""

import json

import pytest
import torch

from dpm.figures.callbacks import ScheduleFigure
from dpm.figures.schedule import schedule
from dpm.app.evaluate import evaluate
from dpm.app.checkpoint import load_checkpoint
from dpm.app.build import restore
from dpm.app.train import train
from dpm.core.schedules import Schedule
from dpm.app.compose import compose

# A large learning rate for a few steps, so the perturbation of beta moves far from zero.
TINY = ["schedule.learned=true", "optimizer.lr=0.05", "trainer.max_steps=25", "trainer.val_check_interval=25",
        "trainer.enable_progress_bar=false", "dataset.n_train=512", "dataset.n_val=64", "dataset.n_test=64",
        "dataset.batch_size=128", "T=12", "logger=csv", "callbacks.figure.every_n_val=0"]


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("learned")
    train(compose(TINY), out)
    return out


def check_schedule(beta: torch.Tensor) -> None:
    """beta in (0, 1) and alpha_bar = prod (1 - beta) strictly decreasing."""
    alpha_bar = torch.cumprod(1 - beta, 0)
    assert bool(((beta > 0) & (beta < 1)).all()), beta
    assert bool((alpha_bar[1:] < alpha_bar[:-1]).all()), alpha_bar


def test_learned_betas_move_stay_valid_and_are_in_the_checkpoint(learned_run):
    ckpt = load_checkpoint(learned_run / "checkpoints" / "last.ckpt")
    perturb = ckpt["state_dict"]["diffusion.schedule.perturb"]
    assert perturb.dtype == torch.float64 and perturb.abs().max() > 0.05  # training moved the schedule
    _, module, _ = restore(ckpt)
    beta = module.diffusion.beta().detach()
    base = Schedule("geometric", T=12, beta_1=1e-5, beta_T=0.5)()
    assert torch.equal(module.diffusion.schedule.perturb.detach(), perturb)  # restored, not re-initialised
    assert not torch.allclose(beta, base) and beta[0] == base[0]  # beta_1 stays fixed (paper 2.4.1)
    check_schedule(beta)


def test_evaluate_uses_the_learned_betas(learned_run, tmp_path):
    ckpt_path = learned_run / "checkpoints" / "last.ckpt"
    evaluate(compose([f"ckpt_path={ckpt_path}"], config_name="evaluate"), tmp_path / "learned")
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["state_dict"]["diffusion.schedule.perturb"].zero_()  # the same weights on the base schedule
    torch.save(ckpt, tmp_path / "base.ckpt")
    evaluate(compose([f"ckpt_path={tmp_path / 'base.ckpt'}"], config_name="evaluate"), tmp_path / "base")
    K = {name: json.loads((tmp_path / name / "eval.json").read_text())["K"] for name in ("learned", "base")}
    assert abs(K["learned"] - K["base"]) > 1e-3, K  # same seed, same draws: only beta differs


def test_binomial_learned_schedule_is_refused_before_anything_is_written(tmp_path):
    """Its gradient is biased (no reparameterisation of a Bernoulli draw): README, "Does learning the schedule help"."""
    with pytest.raises(ValueError, match="schedule.learned=true is refused with binomial diffusion"):
        train(compose(["dataset=heartbeat", "T=20", "schedule.learned=true"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_schedule_figure_shows_a_learned_schedule_start_beside_its_end(learned_run):
    assert (learned_run / "schedule.png").stat().st_size > 5000
    _, module, _ = restore(load_checkpoint(learned_run / "checkpoints" / "last.ckpt"))
    callback = ScheduleFigure(str(learned_run))
    callback.start = (0, Schedule("geometric", T=12, beta_1=1e-5, beta_T=0.5)())
    curves = callback.curves(module, 25)
    assert list(curves) == ["start (step 0)", "end (step 25)"]
    assert not torch.allclose(curves["start (step 0)"], curves["end (step 25)"])
    module.diffusion.schedule.perturb.requires_grad_(False)  # a schedule that is not learned has one curve
    assert list(callback.curves(module, 25)) == ["fixed"]


def test_schedule_plot_takes_the_binomial_schedule_whose_alpha_bar_ends_at_zero(tmp_path):
    beta = Schedule("binomial", T=50)()
    assert torch.cumprod(1 - beta, 0)[-1] == 0
    path = schedule({"fixed": beta}, tmp_path / "schedule.png", "binomial")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
