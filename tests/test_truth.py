"""The true log-likelihood beside K (dpm.core.truth, DataModule.true_log_likelihood, eval.json's truth keys).

Independent checks: the quadrature against a Monte Carlo average over the roll parameter, the normalised density
integrated over the plane, and against scikit-learn's own samples (box counts); the heartbeat by enumeration.
"""

import json
import math

import pytest
import torch

from dpm.core.bound import LN2
from dpm.core.stats import mean_and_stderr
from dpm.data.heartbeat import HeartbeatDataModule, heartbeat_patterns
from dpm.data.swiss_roll import SwissRollDataModule
from dpm.tasks.bound import bound_over_split
from dpm.io.files import write_json
from dpm.app.build import build
from dpm.app.evaluate import evaluate
from dpm.app.train import train
from dpm.core.truth import (ROLL_T, roll_curve, simpson_log_weights, swiss_roll_raw_log_density, truth_fields)
from dpm.app.compose import compose


def monte_carlo_log_density(y: torch.Tensor, noise: float, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """log of (1/n) sum_i N(y; c(t_i), noise^2 I), t_i ~ U(a, b), and its standard error on the log scale."""
    a, b = ROLL_T
    t = a + (b - a) * torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    dens = torch.exp(-torch.cdist(y.double(), roll_curve(t)).pow(2) / (2 * noise**2)) / (2 * math.pi * noise**2)
    mean = dens.mean(1)
    return mean.log(), dens.std(1) / math.sqrt(n) / mean


def test_simpson_rule_is_exact_for_cubics():
    t, log_w = simpson_log_weights(11, -1.0, 2.0)
    f = 3 * t**3 - t**2 + 2
    assert (log_w.exp() * f).sum().item() == pytest.approx(3 * (16 - 1) / 4 - (8 + 1) / 3 + 2 * 3, rel=1e-12)
    with pytest.raises(ValueError, match="odd"):
        simpson_log_weights(10, 0.0, 1.0)


@pytest.mark.parametrize("noise", [0.5, 0.1])
def test_quadrature_matches_monte_carlo_over_the_roll_parameter(noise):
    dm = SwissRollDataModule(n_train=2000, n_val=10, n_test=200, noise=noise)
    dm.setup()
    y = dm.splits["test"][:6].double() * dm.scale + dm.shift.double()  # back to raw roll coordinates
    y = torch.cat([y, torch.tensor([[0.0, 0.0], [14.0, -3.0]], dtype=torch.float64)])  # off the data, too
    mc, se = monte_carlo_log_density(y, noise, 200_000)
    quad = swiss_roll_raw_log_density(y, noise)
    near = se < 0.05  # points far from the roll have MC estimates too noisy to compare
    assert near.sum() >= 6
    assert torch.all((quad[near] - mc[near]).abs() < 4 * se[near] + 1e-3), (quad, mc, se)


def test_normalised_density_integrates_to_one_so_the_jacobian_is_in():
    dm = SwissRollDataModule(n_train=5000, n_val=10, n_test=10, noise=0.5)
    dm.setup()
    h = 0.02
    axis = torch.arange(-3.0, 3.0 + h / 2, h, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    total = dm.true_log_likelihood(grid).exp().sum().item() * h * h
    assert total == pytest.approx(1.0, abs=2e-3)  # without the Jacobian it would be 1 / scale^2 ~ 0.02
    assert dm.scale > 5


def test_density_predicts_the_share_of_samples_in_boxes():
    """P(box) by integrating the normalised density against the fraction of the data module's own (scikit-learn's)
    samples that fall in it, for a few boxes across the roll: a binomial test at ~4 standard deviations."""
    dm = SwissRollDataModule(n_train=40000, n_val=10, n_test=10, noise=0.3, seed=3)
    dm.setup()
    x = dm.splits["train"].double()
    h = 0.01
    for lo in ([-0.5, -0.5], [0.3, -1.5], [-1.8, 0.2], [1.0, 0.5]):
        lo = torch.tensor(lo, dtype=torch.float64)
        axis = torch.arange(h / 2, 0.6, h, dtype=torch.float64)
        cells = lo + torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
        p = dm.true_log_likelihood(cells).exp().sum().item() * h * h
        share = ((x >= lo) & (x < lo + 0.6)).all(1).double().mean().item()
        assert abs(share - p) < 4 * math.sqrt(max(p, 1e-4) * (1 - p) / len(x)) + 1e-3, (lo.tolist(), share, p)


def test_data_modules_report_their_truth_or_none():
    roll = SwissRollDataModule(n_train=100, n_val=10, n_test=10, noise=0.0)
    roll.setup()
    assert roll.true_log_likelihood(roll.splits["test"]) is None  # no density on a curve
    hb = HeartbeatDataModule(n_train=100, n_val=10, n_test=10, length=20, period=5)
    x = torch.cat([heartbeat_patterns(), torch.zeros(1, 20)])
    truth = hb.true_log_likelihood(x)
    assert truth[:5].tolist() == pytest.approx([math.log(1 / 5)] * 5) and truth[5] == -math.inf
    # enumeration: the five patterns are all the data there is, and their probabilities sum to one
    assert truth[:5].exp().sum().item() == pytest.approx(1.0)


def test_truth_fields_pair_the_differences():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(400, generator=g, dtype=torch.float64)
    K = truth - 0.3 + 0.05 * torch.randn(400, generator=g, dtype=torch.float64)  # K tracks the truth per example
    fields = truth_fields(K, truth)
    assert fields["true_log_likelihood"] == pytest.approx(truth.mean().item())
    assert fields["true_log_likelihood_stderr"] == pytest.approx(truth.std().item() / 20)
    assert fields["gap_to_truth"] == pytest.approx((K - truth).mean().item())
    assert fields["gap_to_truth_stderr"] == pytest.approx((K - truth).std().item() / 20)
    assert fields["gap_to_truth_stderr"] < 0.1 * mean_and_stderr(K, ddof=1)[1]  # pairing removes the shared variation
    with pytest.raises(ValueError, match="same examples"):
        truth_fields(K, truth[:10])


TINY = ["trainer.max_steps=30", "trainer.val_check_interval=30", "trainer.enable_progress_bar=false",
        "dataset.n_train=512", "dataset.n_val=64", "dataset.n_test=200", "dataset.batch_size=128", "T=10",
        "callbacks=minimal", "logger=none"]


def test_eval_json_sets_K_beside_the_truth_of_the_noisy_swiss_roll(tmp_path):
    train(compose([*TINY, "dataset.noise=0.5"]), tmp_path / "run")
    evaluate(compose([f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"], config_name="evaluate"),
             tmp_path / "eval")
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    dm = SwissRollDataModule(n_train=512, n_val=64, n_test=200, noise=0.5)
    dm.setup()
    truth_bits = dm.true_log_likelihood(dm.splits["test"]) / LN2
    assert result["true_log_likelihood"] == pytest.approx(truth_bits.mean().item(), abs=1e-6)
    assert result["true_log_likelihood_stderr"] == pytest.approx(mean_and_stderr(truth_bits, ddof=1)[1], abs=1e-6)
    assert result["gap_to_truth"] == pytest.approx(result["K"] - result["true_log_likelihood"], abs=1e-6)
    assert 0 < result["gap_to_truth_stderr"] < result["K_stderr"] + result["true_log_likelihood_stderr"]
    assert result["gap_to_truth"] <= 3 * result["gap_to_truth_stderr"]  # a bound: never above the truth


def test_eval_json_heartbeat_truth_is_log2_one_fifth(tmp_path):
    cfg = compose(["dataset=heartbeat", "T=50", "dataset.n_train=100", "dataset.n_val=10", "dataset.n_test=40"])
    dm, module = build(cfg)
    result = bound_over_split(module.eval(), dm, progress=False)
    write_json(tmp_path / "eval.json", result)
    assert result["true_log_likelihood"] == pytest.approx(math.log2(1 / 5))
    assert result["true_log_likelihood_stderr"] == 0
    assert result["gap_to_truth"] == pytest.approx(result["K"] - math.log2(1 / 5))
    assert result["gap_to_truth_stderr"] == pytest.approx(result["K_stderr"])  # the truth is the same for all
    assert json.loads((tmp_path / "eval.json").read_text())["gap_to_truth"] == pytest.approx(result["gap_to_truth"])


def test_no_truth_keys_where_the_density_is_unknown(tmp_path):
    dm, module = build(compose([*TINY]))
    result = bound_over_split(module.eval(), dm, limit=50, progress=False)
    assert "true_log_likelihood" not in result and "gap_to_truth" not in result


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_trained_model_on_the_noisy_roll_stays_below_the_truth(tmp_path):
    """A few thousand steps: K approaches the truth but is never above it by more than 3 paired standard errors."""
    train(compose(["dataset.noise=0.5", "trainer.max_steps=3000", "trainer.val_check_interval=3000",
                   "trainer.enable_progress_bar=false", "callbacks=minimal", "logger=none"]), tmp_path / "run")
    evaluate(compose([f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", "limit=2000"],
                     config_name="evaluate"), tmp_path / "eval")
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["gap_to_truth"] <= 3 * result["gap_to_truth_stderr"], result
    assert result["gap_to_truth"] > -0.5, result  # and it has learned most of the density
