"""The evaluate tasks of dpm.tasks on small models (fixed or random networks, no training): what they write, the
facts they must hold (inpainted pixels exact, completions keep the given bins), and early, clear failures."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpm.core.binomial import BinomialDiffusion
from dpm.data.digits import DigitsDataModule
from dpm.data.heartbeat import HeartbeatDataModule
from dpm.data.swiss_roll import SwissRollDataModule
from dpm.core.gaussian import GaussianDiffusion
from dpm.model.module import DiffusionModule
from dpm.app.evaluate import evaluate
from dpm.app.train import train
from dpm.core.schedules import Schedule
from dpm.tasks import TASKS
from dpm.tasks.complete import consistent
from dpm.tasks.inpaint import make_mask
from dpm.app.compose import compose
from tests.helpers import ConstantNet, random_mlp

T = 10


def module(diffusion, net) -> DiffusionModule:
    return DiffusionModule(net, diffusion, optimizer=lambda params: torch.optim.Adam(params)).eval()


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule()
    dm.setup()
    return dm, module(GaussianDiffusion(Schedule("sd2015", T=T)), ConstantNet(2))


@pytest.fixture(scope="module")
def heartbeat():
    dm = HeartbeatDataModule(n_train=100, n_val=20, n_test=60)
    dm.setup()
    return dm, module(BinomialDiffusion(Schedule("binomial", T=T), p=0.2), ConstantNet(1))


@pytest.fixture(scope="module")
def swiss_roll():
    dm = SwissRollDataModule(n_train=500, n_val=100, n_test=100)
    dm.setup()
    return dm, module(GaussianDiffusion(Schedule("geometric", T=T)), random_mlp(2, 2, T, seed=0, scale=0.1))


def cfg(task, *overrides):
    return compose(["ckpt_path=unused", f"task={task}", "progress=false", *overrides], config_name="evaluate")


def run_task(task, data, out_dir, *overrides):
    dm, m = data
    return TASKS[task](m, dm, cfg(task, *overrides), Path(out_dir), torch.device("cpu"))


def written(out_dir, task):
    return all((Path(out_dir) / f"{task}.{ext}").stat().st_size > 0 for ext in ("png", "npz", "json"))


# ---- each task runs and writes its figure, arrays and numbers ------------------------------------------
@pytest.mark.parametrize("mask,over_t", [("centre", "constant"), ("left", "tempered"), ("random", "diffused")])
def test_inpaint_keeps_known_pixels_exactly(digits, tmp_path, mask, over_t):
    result = run_task("inpaint", digits, tmp_path, f"inpaint.mask={mask}", "inpaint.n=6", f"r_over_t={over_t}")
    assert written(tmp_path, "inpaint") and result["known_pixels_exact"] is True
    arrays = np.load(tmp_path / "inpaint.npz")
    known = ~arrays["missing"][None].repeat(6, 0)
    assert np.array_equal(arrays["result"][known], arrays["x0"][known])
    # the start holds them too where r acts at t = T (Eq. 23), not where r^0 = 1 (tempered) or diffused
    assert np.array_equal(arrays["x_T"][known], arrays["x0"][known]) == (over_t == "constant")
    assert not np.array_equal(arrays["result"][~known], arrays["x0"][~known])


def test_masks():
    shape = (1, 8, 8)
    centre = make_mask("centre", shape, 0.5, 0)
    assert centre.sum() == 16 and centre[0, 2:6, 2:6].all()
    assert make_mask("left", shape, 0.5, 0)[0, :, :4].all() and make_mask("left", shape, 0.5, 0).sum() == 32
    assert make_mask("right", shape, 0.5, 0)[0, :, 4:].all() and make_mask("right", shape, 0.5, 0).sum() == 32
    rgb = make_mask("random", (3, 16, 16), 0.3, 0)
    assert torch.equal(rgb[0], rgb[2]) and 0.15 < rgb.float().mean() < 0.45  # all channels of a pixel together
    assert torch.equal(rgb, make_mask("random", (3, 16, 16), 0.3, 0))  # seeded


def test_mask_files(digits, tmp_path):
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:3] = 1
    np.save(tmp_path / "m.npy", mask)
    Image.fromarray(mask * 255).save(tmp_path / "m.png")
    for name in ("m.npy", "m.png"):
        got = make_mask(str(tmp_path / name), (1, 8, 8), 0.5, 0)
        assert got.shape == (1, 8, 8) and torch.equal(got[0], torch.from_numpy(mask.astype(bool)))
    out = tmp_path / "out"
    assert run_task("inpaint", digits, out, f"inpaint.mask={tmp_path / 'm.npy'}", "inpaint.n=2")[
        "n_missing_per_image"] == 24


def test_denoise(digits, tmp_path):
    result = run_task("denoise", digits, tmp_path, "denoise.n=20", "denoise.n_samples=2")
    assert written(tmp_path, "denoise")
    arrays = np.load(tmp_path / "denoise.npz")
    assert arrays["samples"].shape == (2, 20, 1, 8, 8)
    noisy = ((arrays["y"] - arrays["x0"]) ** 2).mean()
    assert result["mse_noisy"] == pytest.approx(noisy) and 0.8 < noisy < 1.2  # sigma_d = 1
    assert result["mse_posterior_mean"] == pytest.approx(((arrays["samples"].mean(0) - arrays["x0"]) ** 2).mean(),
                                                         rel=1e-5)


@pytest.mark.parametrize("particles", [1, 4])
def test_complete_keeps_the_given_bins(heartbeat, tmp_path, particles):
    result = run_task("complete", heartbeat, tmp_path, "complete.k=5", "complete.n=40",
                      f"complete.particles={particles}")
    assert written(tmp_path, "complete") and result["known_bins_exact"] is True
    arrays = np.load(tmp_path / "complete.npz")
    assert np.array_equal(arrays["result"][:, :5], arrays["x0"][:, :5])
    assert result["patterns_consistent_per_example"] == 1.0  # 5 bins fix the phase
    # 5 bins fix the phase, so the one consistent pattern is the held-out sequence itself: the fraction is that of
    # completions equal to it, counted here from the saved arrays
    whole = (arrays["result"] == arrays["x0"]).all(1)
    assert result["fraction_consistent"] == pytest.approx(whole.mean())
    assert result["particles"] == particles
    if particles == 1:
        assert result["sampler"] == "single chain" and result["r_over_t"] == "constant"
        return
    assert result["sampler"] == "smc" and result["r_over_t"] is None
    assert arrays["particles"].shape == (40, particles, 20) and (arrays["particles"][:, :, :5] == arrays["x0"][
        :, None, :5]).all()
    assert arrays["ess"].shape == (T,) and result["mean_ess"] == pytest.approx(arrays["ess"].mean())
    assert result["resamplings"] == arrays["resampled"].sum() and 1 <= result["final_ess"] <= particles
    # the completion is one of each sequence's particles
    assert (arrays["particles"] == arrays["result"][:, None]).all(2).any(1).all()


def test_complete_counts_the_completions_that_are_the_held_out_pattern(tmp_path):
    """With the exact per-bit reverse kernel some completions are right and some are not: fraction_consistent is
    the share of completions equal to their held-out sequence (5 given bins fix the phase), counted here."""
    from dpm.data.heartbeat import heartbeat_patterns
    from tests.helpers import ExactHeartbeatKernel

    dm = HeartbeatDataModule(n_train=100, n_val=20, n_test=60)
    dm.setup()
    d = BinomialDiffusion(Schedule("binomial", T=T), p=0.2)
    result = run_task("complete", (dm, module(d, ExactHeartbeatKernel(d, heartbeat_patterns()))), tmp_path,
                      "complete.k=5", "complete.n=40")
    arrays = np.load(tmp_path / "complete.npz")
    right = (arrays["result"] == arrays["x0"]).all(1)
    assert 0 < right.sum() < len(right)
    assert result["fraction_consistent"] == pytest.approx(right.mean())


def test_complete_by_smc_is_seeded(heartbeat, tmp_path):
    first = run_task("complete", heartbeat, tmp_path / "a", "complete.n=20", "complete.particles=3", "seed=5")
    again = run_task("complete", heartbeat, tmp_path / "b", "complete.n=20", "complete.particles=3", "seed=5")
    assert first == again
    assert np.array_equal(np.load(tmp_path / "a" / "complete.npz")["particles"],
                          np.load(tmp_path / "b" / "complete.npz")["particles"])


def test_smc_progress_shows_the_ess_and_the_resamplings(heartbeat, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("dpm.io.progress.QUIET_S", 0.0)  # lines from the start, though this work is short
    run_task("complete", heartbeat, tmp_path, "complete.n=10", "complete.particles=3", "progress=true")
    out = capsys.readouterr().out
    assert "complete (SMC): 100%" in out and "ESS=" in out and "resampled=" in out
    assert "SMC (SMCDiff, Trippe et al. 2022; not in the paper): 3 particles per example, resampled" in out


def test_inpaint_by_smc_keeps_known_pixels_exactly(digits, tmp_path):
    result = run_task("inpaint", digits, tmp_path, "inpaint.n=3", "inpaint.particles=4")
    assert written(tmp_path, "inpaint") and result["known_pixels_exact"] is True
    assert result["sampler"] == "smc" and result["particles"] == 4 and "resamplings" in result
    arrays = np.load(tmp_path / "inpaint.npz")
    known = ~arrays["missing"]
    assert (arrays["particles"][:, :, known] == arrays["x0"][:, None, known]).all()
    assert arrays["x_T"].shape == arrays["x0"].shape


def test_consistent_completions():
    patterns = torch.tensor([[1.0, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 1]])
    given = torch.tensor([[0.0, 0, 9, 9, 9, 9], [0, 0, 9, 9, 9, 9], [1, 0, 9, 9, 9, 9]])
    completions = torch.tensor([[0.0, 0, 1, 0, 0, 1], [0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 1, 0]])
    assert consistent(completions, given, patterns, 2).tolist() == [True, False, False]


def test_constrain(swiss_roll, tmp_path):
    result = run_task("constrain", swiss_roll, tmp_path, "constrain.n=200")
    assert written(tmp_path, "constrain")
    for key in ("constrained", "plain"):
        assert set(result[key]) == {"in_half_plane", "on_data", "both"}
    assert result["constrained"]["in_half_plane"] > result["plain"]["in_half_plane"]


def test_parzen(digits, tmp_path):
    result = run_task("parzen", digits, tmp_path, "parzen.n_samples=60", "parzen.n_val=30", "parzen.n_test=40",
                      "batch_size=25")
    assert written(tmp_path, "parzen")
    assert result["n_samples"] == 60 and result["n_test"] == 40 and result["dims"] == 64
    model, perfect = result["model"], result["perfect_model"]
    assert model["sigma"] in result["sigmas"] and perfect["sigma"] in result["sigmas"]
    assert perfect["ll_nats"] > model["ll_nats"]  # training images beat a model that outputs noise
    assert model["ll_bits"] == pytest.approx(model["ll_nats"] / np.log(2))
    samples = np.load(tmp_path / "parzen.npz")["samples"]
    assert samples.shape == (60, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1


# ---- bad settings fail before any sampling, naming the key ---------------------------------------------
BAD = [
    ("inpaint", "digits", ["inpaint.mask=nosuchmask"], "inpaint.mask='nosuchmask' is neither one of"),
    ("inpaint", "digits", ["inpaint.fraction=0"], r"inpaint.fraction=0 is invalid: it must be a finite number > 0 and <= 1"),
    ("inpaint", "heartbeat", [], "task=inpaint needs image data"),
    ("denoise", "digits", ["denoise.sigma_d=0"], "denoise.sigma_d=0 is invalid: it must be a finite number > 0"),
    ("denoise", "digits", ["denoise.sigma_d=-1.0"], "denoise.sigma_d=-1.0 is invalid"),
    ("denoise", "digits", ["denoise.start=middle"], r"denoise.start='middle' is unknown; valid choices: \['observed'"),
    ("denoise", "digits", ["denoise.n=100000"], "denoise.n=100000 is more than the 400 examples of the test split"),
    ("denoise", "heartbeat", [], r"task=denoise needs a kernel that takes a Gaussian r \(GaussianR\); binomial diffusion"),
    ("complete", "heartbeat", ["complete.k=0"], r"complete.k=0 is invalid: it must be an integer >= 1 and <= 20"),
    ("complete", "heartbeat", ["complete.k=21"], r"complete.k=21 is invalid: it must be an integer <= 20"),
    ("complete", "digits", [], "task=complete needs sequence data"),
    ("complete", "swiss_roll", [], r"task=complete needs sequence data .* swiss_roll holds vectors of shape \(2,\)"),
    ("constrain", "swiss_roll", ["constrain.width=0"], "constrain.width=0 is invalid"),
    ("constrain", "swiss_roll", ["constrain.normal=[0,0]"], "constrain.normal=.* not both 0"),
    ("constrain", "digits", [], "task=constrain needs 2-D points"),
    ("parzen", "swiss_roll", [], "task=parzen needs image data"),
    ("parzen", "heartbeat", [], "task=parzen needs image data"),
    ("parzen", "digits", ["parzen.sigma_logspace=[-1,0]"], r"parzen.sigma_logspace=\[-1, 0\] is invalid"),
    ("inpaint", "digits", ["r_over_t=sometimes"], r"r_over_t='sometimes' is unknown; valid choices"),
    ("inpaint", "digits", ["inpaint.particles=0"], "inpaint.particles=0 is invalid: it must be an integer >= 1"),
    ("inpaint", "digits", ["inpaint.particles=4", "r_over_t=diffused"],
     "r_over_t=diffused does not combine with inpaint.particles=4: SMC"),
    ("complete", "heartbeat", ["complete.particles=0", "complete.n=20"],
     "complete.particles=0 is invalid: it must be an integer >= 1"),
    ("complete", "heartbeat", ["complete.particles=2.5", "complete.n=20"], "complete.particles=2.5 is invalid"),
    ("complete", "heartbeat", ["r_over_t=tempered", "complete.n=20"],  # particles: 32 by default
     "r_over_t=tempered does not combine with complete.particles=32"),
    ("complete", "heartbeat", ["complete.particles=4", "batch_size=0", "complete.n=20"], "batch_size=0 is invalid"),
    ("denoise", "digits", ["r_over_t=diffused"], r"r_over_t='diffused' is not for task=denoise; valid choices"),
]


@pytest.mark.parametrize("task,data,overrides,message", BAD, ids=[f"{b[0]}-{b[2]}" for b in BAD])
def test_bad_settings_fail_early(request, tmp_path, monkeypatch, task, data, overrides, message):
    dm, m = request.getfixturevalue(data)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the settings")

    monkeypatch.setattr(m.diffusion, "sample", no_sampling)
    with pytest.raises(ValueError, match=message):
        TASKS[task](m, dm, cfg(task, *overrides), tmp_path, torch.device("cpu"))
    assert not any(tmp_path.iterdir())


def test_mask_file_of_the_wrong_shape(digits, tmp_path):
    np.save(tmp_path / "m.npy", np.ones((5, 5)))
    with pytest.raises(ValueError, match=r"m.npy' has shape \(5, 5\); this data needs \(8, 8\) \(H, W\) or "
                                         r"\(1, 8, 8\)"):
        run_task("inpaint", digits, tmp_path / "out", f"inpaint.mask={tmp_path / 'm.npy'}")


# ---- through evaluate(), from a checkpoint ---------------------------------------------------------------
def test_evaluate_dispatches_the_tasks(tmp_path):
    tiny = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
            "dataset.n_train=128", "dataset.n_val=32", "dataset.n_test=32", "dataset.batch_size=64", "T=6",
            "callbacks=minimal", "logger=none"]
    train(compose(tiny), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ev = compose([f"ckpt_path={ckpt}", "task=constrain", "progress=false", "constrain.n=50"],
                 config_name="evaluate")
    result = evaluate(ev, tmp_path / "eval")
    assert result["task"] == "constrain" and written(tmp_path / "eval", "constrain")
    ev.task = "parzen"
    with pytest.raises(ValueError, match="task=parzen needs image data"):
        evaluate(ev, tmp_path / "eval2")


def test_complete_takes_a_users_own_0_1_sequences(tmp_path):
    """What the data module says its data are (0/1 sequences from an array file) decides, not the class's figure."""
    from tests.helpers import save_untrained

    np.save(tmp_path / "bits.npy", (np.random.default_rng(0).random((120, 10)) < 0.3).astype(np.uint8))
    ckpt = save_untrained(tmp_path / "bits.ckpt", ["dataset=array", f"dataset.path={tmp_path / 'bits.npy'}",
                                                   "diffusion=binomial", "schedule=binomial", "T=6"])
    ev = compose([f"ckpt_path={ckpt}", "task=complete", "complete.n=5", "complete.k=3", "complete.particles=1",
                  "progress=false"], config_name="evaluate")
    result = evaluate(ev, tmp_path / "out")
    assert result["task"] == "complete" and result["known_bins_exact"] is True and result["n_examples"] == 5


def test_parzen_refuses_continuous_images_before_drawing_a_sample(tmp_path):
    from dpm.errors import ConfigError
    from tests.helpers import save_untrained

    np.save(tmp_path / "im.npy", np.random.default_rng(0).random((60, 6, 6)))  # no n_levels: continuous values
    ckpt = save_untrained(tmp_path / "im.ckpt", ["dataset=array", f"dataset.path={tmp_path / 'im.npy'}",
                                                 "net=conv_mnist", "net.n_hidden_dense_lower=8", "T=6"])
    ev = compose([f"ckpt_path={ckpt}", "task=parzen", "progress=false"], config_name="evaluate")
    with pytest.raises((ValueError, ConfigError), match=r"task=parzen needs images on a grid of grey levels"):
        evaluate(ev, tmp_path / "out")
    assert not (tmp_path / "out").exists()
