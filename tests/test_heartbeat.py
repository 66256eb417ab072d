"""The binary heartbeat: its data, its config, the bound against the true log-likelihood log2(1/5), samples.

The bound checks use the Bayes-optimal reverse kernel of the binomial form (BayesNet) as an independent
reference that needs no training, and a trained model (fast: a short run through dpm.app.train; slow: a longer one).
"""

import json
import math

import pytest
import torch
from torch import nn

from dpm.core.binomial import BinomialDiffusion
from dpm.core.bound import LN2, K_per_example
from dpm.core.stats import mean_and_stderr
from dpm.data.heartbeat import HeartbeatDataModule, heartbeat_patterns, pattern_index, true_log2_likelihood
from dpm.nets.mlp import MLP
from dpm.app.build import build, restore
from dpm.app.evaluate import evaluate
from dpm.app.checkpoint import load_checkpoint
from dpm.app.train import train
from dpm.core.schedules import Schedule
from dpm.app.compose import compose

TRUTH = math.log2(1 / 5)  # -2.322 bits/seq
L_NULL = 4 * math.log2(0.2) + 16 * math.log2(0.8)  # -14.439 bits/seq under B(0.2)
SMALL = ["dataset.n_train=2000", "dataset.n_val=200", "dataset.n_test=200"]


class BayesNet(nn.Module):
    """The best reverse kernel B(x_{t-1}; f_b(x_t, t)) with independent bits for data uniform over `patterns`:
    f_b = sum_k p(x0 = k | x_t) q(x_{t-1} = 1 | x_t, x0 = k), written as the network output z the diffusion
    expects (logit f_b - logit of the forward kernel). xt [N, D], t [N] -> [N, 1, D]."""

    def __init__(self, diffusion: BinomialDiffusion, patterns: torch.Tensor) -> None:
        super().__init__()
        self.d, self.patterns = diffusion, patterns

    def forward(self, xt, t):
        x0, xt_k = self.patterns[None], xt[:, None]  # [1, K, D], [N, 1, D]: broadcast to [N, K, D]
        m = self.d.marginal(x0, t)[0]
        log_lik = (xt_k * m.log() + (1 - xt_k) * (-m).log1p()).sum(-1)  # log q(x_t | x0 = k), [N, K]
        post = self.d.q_posterior(x0, xt_k, t)[0]  # q(x_{t-1} = 1 | x_t, x0 = k), [N, K, D]
        f = (torch.softmax(log_lik, 1)[..., None] * post).sum(1).clamp(1e-7, 1 - 1e-7)
        return (torch.logit(f) - torch.logit(self.d.forward_kernel(xt, t)[0].clamp(1e-6, 1 - 1e-6)))[:, None]


# ---- data ---------------------------------------------------------------------------------------------

def test_splits_hold_the_five_patterns_with_uniform_phase():
    dm = HeartbeatDataModule(n_train=5000, n_val=100, n_test=300)
    dm.setup()
    train = dm.splits["train"]
    assert train.shape == (5000, 20) and dm.data_shape == (20,) and train.dtype == torch.float32
    phase = pattern_index(train)
    assert (phase >= 0).all()  # every row is one of the 5 sequences ...
    assert torch.equal(train, heartbeat_patterns()[phase])
    assert (train.sum(1) == 4).all() and train.mean().item() == pytest.approx(0.2)  # ... mean activity 1/5
    counts = torch.bincount(phase, minlength=5).double()
    chi2 = ((counts - 1000) ** 2 / 1000).sum().item()
    assert chi2 < 18.5  # chi-square, 4 d.o.f., p = 0.001: the phase is uniform
    pats = heartbeat_patterns()
    for k in range(5):  # a 1 every 5th bin from bin k
        assert pats[k].nonzero().flatten().tolist() == [k, k + 5, k + 10, k + 15]
    # not normalised: the bits stay bits
    assert dm.shift.item() == 0.0 and dm.scale == 1.0
    # fixed seeds: the same splits every time, different splits different
    again = HeartbeatDataModule(n_train=5000, n_val=100, n_test=300)
    again.setup()
    assert all(torch.equal(dm.splits[s], again.splits[s]) for s in dm.splits)
    assert not torch.equal(dm.splits["test"], dm.splits["train"][:300])
    assert true_log2_likelihood(5) == pytest.approx(-2.3219, abs=1e-4)


def test_pattern_index_rejects_other_sequences():
    x = torch.stack([heartbeat_patterns()[3], torch.zeros(20), heartbeat_patterns()[0].roll(1) * 0 + 1])
    assert pattern_index(x).tolist() == [3, -1, -1]


@pytest.mark.parametrize("kwargs, key", [({"length": 21}, "dataset.length"), ({"period": 0}, "dataset.period"),
                                         ({"n_test": 1}, "dataset.n_test"), ({"batch_size": 0}, "dataset.batch_size")])
def test_bad_arguments_fail_clearly(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        HeartbeatDataModule(**kwargs)


# ---- config -------------------------------------------------------------------------------------------

def test_dataset_config_selects_binomial_diffusion_T_2000_and_the_paper_network():
    cfg = compose(["dataset=heartbeat", "out_dir=/nonexistent", *SMALL])
    assert cfg.T == 2000 and cfg.schedule.kind == "binomial" and cfg.diffusion.p == 0.2
    assert cfg.net.hidden == 50 and cfg.net.n_layers == 3 and cfg.net.activation == "sigmoid"
    dm, module = build(cfg)
    assert isinstance(module.diffusion, BinomialDiffusion) and module.diffusion.p == 0.2 and module.diffusion.T == 2000
    assert isinstance(module.net, MLP) and module.unit == "bits/seq" and dm.name == "heartbeat"
    assert module.net(dm.splits["train"][:3], torch.tensor([2, 1000, 2000])).shape == (3, 1, 20)
    preset = compose(["experiment=heartbeat", "out_dir=/nonexistent"])
    assert preset.dataset._target_.endswith("HeartbeatDataModule") and preset.T == 2000
    assert preset.diffusion.p == 0.2 and preset.net.activation == "sigmoid"


def test_L_null_is_the_data_under_B_of_its_mean_activity():
    d = BinomialDiffusion(Schedule("binomial", T=2000), p=0.2)
    L_null = d.L_null(heartbeat_patterns()) / LN2
    assert torch.allclose(L_null, torch.full((5,), L_NULL)) and L_NULL == pytest.approx(-14.439, abs=1e-3)
    assert TRUTH - L_NULL == pytest.approx(12.117, abs=1e-3)  # the paper's 12.024 is 0.093 bits/seq below this


# ---- the bound and samples of the Bayes-optimal reverse kernel ------------------------------------------

@pytest.fixture(scope="module")
def bayes():
    d = BinomialDiffusion(Schedule("binomial", T=2000), p=0.2)
    return d, BayesNet(d, heartbeat_patterns())


def test_best_reverse_kernel_comes_close_to_but_never_above_the_true_log_likelihood(bayes):
    """With the best kernel of the binomial form the bound is nearly tight at T = 2000 (above the paper's
    -2.414) and, being a bound, not above log2(1/5) by more than 3 standard errors."""
    d, net = bayes
    g = torch.Generator().manual_seed(0)
    x0 = heartbeat_patterns()[torch.randint(5, (200,), generator=g)]
    with torch.no_grad():
        K, se = mean_and_stderr(K_per_example(d, net, x0, "exact", generator=g) / LN2, ddof=1)
    assert K <= TRUTH + 3 * se, (K, se)
    assert K > -2.41, (K, se)


def test_best_reverse_kernel_samples_the_training_patterns(bayes):
    """Ancestral sampling through the best kernel gives the training patterns (at T = 200 only 95% are)."""
    d, net = bayes
    samples, _ = d.sample(net, (1000, 20), torch.Generator().manual_seed(0))
    phase = pattern_index(samples)
    assert (phase >= 0).float().mean() >= 0.99
    assert torch.bincount(phase[phase >= 0], minlength=5).min() > 150  # all five phases, not one


# ---- a trained model ----------------------------------------------------------------------------------

def train_and_evaluate(tmp_path, overrides, n_eval):
    cfg = compose(["dataset=heartbeat", "trainer.enable_progress_bar=false", "logger=csv", *SMALL, *overrides])
    train(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    evaluate(compose([f"ckpt_path={ckpt}", f"limit={n_eval}"], config_name="evaluate"), tmp_path / "eval")
    return json.loads((tmp_path / "eval" / "eval.json").read_text()), ckpt


def test_short_training_run_reports_bits_per_sequence_and_stays_below_the_truth(tmp_path):
    result, _ = train_and_evaluate(tmp_path, ["trainer.max_steps=300", "trainer.val_check_interval=300", "T=400",
                                              "callbacks.figure.every_n_val=0"], 200)
    assert result["dataset"] == "heartbeat" and result["diffusion"] == "binomial" and result["T"] == 400
    assert result["unit"] == "bits/seq" and result["n_examples"] == 200 and result["estimator"] == "exact"
    assert result["L_null"] == pytest.approx(L_NULL, abs=1e-4)
    assert result["K_minus_L_null"] == pytest.approx(result["K"] - L_NULL, abs=1e-4)
    assert result["K"] > L_NULL + 1  # 300 steps already learn something ...
    assert result["K"] <= TRUTH + 3 * result["K_stderr"]  # ... and the bound holds
    assert (tmp_path / "run" / "samples.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_trained_model_bound_and_samples(tmp_path):
    """A few minutes of the CPU default's training: near the truth, never above it, samples are the patterns."""
    result, ckpt = train_and_evaluate(tmp_path, ["trainer.max_steps=8000", "trainer.val_check_interval=4000"], 1000)
    assert TRUTH + 3 * result["K_stderr"] >= result["K"] > -3.0, result
    _, module, _ = restore(load_checkpoint(ckpt))
    samples, _ = module.diffusion.sample(module.net.eval(), (1000, 20), torch.Generator().manual_seed(0))
    assert (pattern_index(samples) >= 0).float().mean() >= 0.9  # 97.8% after the 24k-step CPU default
