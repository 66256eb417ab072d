"""Categorical diffusion (dpm.core.categorical) against independent computations: the binomial kind it reduces to at
C = 2, matrix products for its marginals, the bound by enumerating every trajectory on a tiny case, the model's exact
likelihood by enumeration, Monte Carlo frequencies of its draws; its data (a Markov chain, a user's integer array,
binarised MNIST) and its refusals."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from dpm.app.build import build
from dpm.app.compose import compose
from dpm.core.binomial import BinomialDiffusion
from dpm.core.bound import K_per_example
from dpm.core.categorical import CategoricalDiffusion, class_frequencies
from dpm.core.diffusion import Diffusion
from dpm.core.keyed import Keys
from dpm.core.schedules import Schedule
from dpm.core.smc import smc_sample
from dpm.core.training import K_one_draw, n_draws
from dpm.data.heartbeat import HeartbeatDataModule
from dpm.data.markov import MarkovDataModule, markov_log_likelihood, stationary, transition_matrix
from dpm.errors import ConfigError
from tests.helpers import random_mlp


class AsCategorical(nn.Module):
    """The binomial network's output z as C = 2 logits (0, z): the same kernel for both kinds."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, xt, t):
        z = self.net(xt, t)
        return torch.cat([torch.zeros_like(z), z], 1)


def categorical(T=10, C=3, prior="uniform", schedule="binomial"):
    return CategoricalDiffusion(Schedule(schedule, T=T), n_classes=C, prior=prior)


def Q(beta: float, m: np.ndarray) -> np.ndarray:
    """One forward step's matrix (1 - beta) I + beta 1 m^T, rows x_{t-1}, columns x_t (independent of dpm)."""
    return (1 - beta) * np.eye(len(m)) + beta * np.outer(np.ones(len(m)), m)


# ---- C = 2 is the binomial kind ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_classes_give_the_binomial_bound_per_example_on_the_heartbeat(dtype):
    dm = HeartbeatDataModule(n_train=50, n_val=10, n_test=64)
    dm.setup()
    T = 200
    x0, index = dm.splits["test"].to(dtype), torch.arange(64)
    net = random_mlp(20, 1, T, seed=3, scale=0.5).to(dtype)
    binomial = BinomialDiffusion(Schedule("binomial", T=T), p=0.2)
    cat = CategoricalDiffusion(Schedule("binomial", T=T), n_classes=2, prior=[0.8, 0.2])
    with torch.no_grad():
        K_b = K_per_example(binomial, net, x0, "exact", keys=Keys(7, index))
        K_c = K_per_example(cat, AsCategorical(net), x0, "exact", keys=Keys(7, index))
        z = torch.randn(64, n_draws(x0, 0.0), generator=torch.Generator().manual_seed(1), dtype=dtype)
        one_b, null_b = K_one_draw(binomial, net, x0, z)
        one_c, null_c = K_one_draw(cat, AsCategorical(net), x0, z)
    tol = dict(rtol=1e-10, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    assert K_b.std() > 0.5  # the random network makes the examples differ
    torch.testing.assert_close(K_c, K_b, **tol)
    # the training estimator (T - 1) KL_t: one term's float32 rounding times T - 1 = 199
    torch.testing.assert_close(one_c, one_b, **(tol if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-3)))
    torch.testing.assert_close(null_c, null_b, **tol)
    torch.testing.assert_close(cat.bound_const(x0), binomial.bound_const(x0), **tol)


# ---- the closed forms against matrices and the generic terms -----------------------------------------------------
def test_marginals_and_posteriors_are_the_matrix_products():
    m = np.array([0.1, 0.2, 0.3, 0.4])
    d = categorical(T=6, C=4, prior=m.tolist(), schedule="linear").double()
    beta = d.beta().numpy()
    x0 = torch.arange(4, dtype=torch.float64)[:, None]  # one example per class, one position
    prod = np.eye(4)
    for t in range(1, 7):
        prod = prod @ Q(beta[t - 1], m)  # rows: q(x_t | x0)
        got = torch.stack(d.marginal(x0, torch.full((4,), t))).exp()[:, :, 0].T.numpy()
        np.testing.assert_allclose(got, prod, rtol=1e-12)
    # Bayes over x_{t-1} with the matrices: q(x_{t-1} | x_t, x0) ∝ Qbar_{t-1}[x0, .] Q_t[., x_t]
    t = 4
    before = np.linalg.multi_dot([Q(b, m) for b in beta[:t - 1]])
    for c, k in itertools.product(range(4), range(4)):
        want = before[c] * Q(beta[t - 1], m)[:, k]
        post = d.q_posterior(torch.tensor([[float(c)]]).double(), torch.tensor([[float(k)]]).double(),
                             torch.tensor([t]))
        np.testing.assert_allclose(torch.stack(post).exp()[:, 0, 0].numpy(), want / want.sum(), rtol=1e-12)


@pytest.mark.parametrize("schedule", ["binomial", "sd2015", "linear"])
def test_closed_form_constant_terms_equal_the_five_terms(schedule):
    d = categorical(T=30, C=5, prior=[0.5, 0.1, 0.1, 0.2, 0.1], schedule=schedule).double()
    x0 = torch.randint(5, (40, 7), generator=torch.Generator().manual_seed(0)).float()
    generic = Diffusion.bound_const(d, x0)  # the five terms from marginal, entropy, prior terms (float32)
    assert generic.std() > 0.1
    torch.testing.assert_close(d.bound_const(x0), generic, rtol=1e-5, atol=1e-5)


def test_draws_follow_the_marginal_keyed_and_streamed():
    d = categorical(T=10, C=3, prior=[0.6, 0.3, 0.1])
    x0 = torch.full((200_000, 1), 2.0)
    t = torch.full((len(x0),), 5)
    want = torch.stack(d.marginal(x0[:1], t[:1])).exp()[:, 0, 0]
    for xt in (d.q_sample(x0, t, torch.Generator().manual_seed(0)),
               d.q_sample(x0, t, keys=Keys(3, torch.arange(len(x0))))):
        freq = torch.bincount(xt.long().flatten(), minlength=3) / len(x0)
        assert (freq - want).abs().max() < 4 * math.sqrt(0.25 / len(x0))
    prior = d.prior_sample((200_000,), torch.Generator().manual_seed(1))
    assert (torch.bincount(prior.long(), minlength=3) / 200_000 - torch.tensor([0.6, 0.3, 0.1])).abs().max() < 0.005
    again = d.q_sample(x0[:50], t[:50], keys=Keys(3, torch.arange(50)))  # an example's draw whatever its batch
    assert torch.equal(again, d.q_sample(x0, t, keys=Keys(3, torch.arange(len(x0))))[:50])


# ---- the bound by enumeration: every trajectory of a tiny case ------------------------------------------------
def tiny_case(T=3, C=3, D=2, seed=0):
    m = np.array([0.5, 0.3, 0.2])
    d = categorical(T=T, C=C, prior=m.tolist(), schedule="linear").double()
    net = random_mlp(D, C, T, seed=seed, scale=0.8).double()
    states = torch.tensor(list(itertools.product(range(C), repeat=D)), dtype=torch.float64)  # [C^D, D]
    return d, net, m, states


def reverse_matrices(d, net, m, states):
    """p(x_{t-1} = row | x_t = column) over all joint states, for t = 2..T, computed here from the network's logits
    z and the forward step's matrices (independent of dpm's p_params): {t: [S, S]}."""
    beta, S = d.beta().numpy(), len(states)
    idx = states.long().numpy()
    out = {}
    for t in range(2, d.T + 1):
        with torch.no_grad():
            z = net(states, torch.full((S,), t)).numpy()  # [S, C, D]
        P = np.zeros((S, S))
        for col in range(S):
            per_position = []
            for pos in range(states.shape[1]):
                logits = np.log((1 - beta[t - 1]) * (np.arange(len(m)) == idx[col, pos]) + beta[t - 1] * m)
                logits = logits + z[col, :, pos]
                per_position.append(np.exp(logits - np.log(np.exp(logits).sum())))
            P[:, col] = [np.prod([per_position[pos][idx[row, pos]] for pos in range(len(per_position))])
                         for row in range(S)]
        out[t] = P
    return out


def forward_matrices(d, m, states):
    """q(x_t = column | x_{t-1} = row) over joint states, t = 1..T: independent positions."""
    idx = states.long().numpy()
    return {t: np.array([[np.prod([Q(b, m)[i, j] for i, j in zip(r, c)]) for c in idx] for r in idx])
            for t, b in enumerate(d.beta().numpy(), start=1)}


def test_bound_by_enumerating_every_trajectory_equals_K_and_stays_below_the_exact_likelihood():
    d, net, m, states = tiny_case()
    S, T = len(states), d.T
    fwd, rev = forward_matrices(d, m, states), reverse_matrices(d, net, m, states)
    pi = np.array([np.prod(m[s]) for s in states.long().numpy()])
    last = fwd[1] * pi[:, None] / (pi @ fwd[1])[None, :]  # p(x0 = row | x1 = column), Bayes with pi (App. B.2)
    # the model's exact likelihood: p(x0) = sum over x_1..x_T of pi(x_T) prod_t p(x_{t-1} | x_t)
    marginal = pi
    for t in range(T, 1, -1):
        marginal = rev[t] @ marginal
    exact = np.log(last @ marginal)
    for x0 in range(S):
        # the bound by brute force over all S^T trajectories x_1..x_T
        enumerated = 0.0
        for path in itertools.product(range(S), repeat=T):
            xs = (x0, *path)
            q = np.prod([fwd[t][xs[t - 1], xs[t]] for t in range(1, T + 1)])
            log_p = np.log(pi[xs[T]]) + np.log(last[x0, xs[1]]) + sum(np.log(rev[t][xs[t - 1], xs[t]])
                                                                     for t in range(2, T + 1))
            enumerated += q * (log_p - np.log(q))
        # dpm's K with the expectation over x_t of each KL term taken exactly (every state of x_t, weighted)
        x = states[x0:x0 + 1]
        K = d.bound_const(x).item()
        for t in range(2, T + 1):
            tt = torch.full((S,), t)
            q_t = torch.stack(d.marginal(x.expand(S, -1), tt)).exp()  # [C, S, D]
            weight = torch.stack([q_t[states[s].long(), s, torch.arange(2)].prod() for s in range(S)])
            with torch.no_grad():
                kl = d.kl(d.q_posterior(x.expand(S, -1), states, tt), d.p_params(net(states, tt), states, tt)).sum(1)
            K -= (weight * kl).sum().item()
        assert K == pytest.approx(enumerated, abs=1e-10)
        assert exact[x0] >= K - 1e-12 and exact[x0] - K > 1e-4  # a bound, not an equality, for this network


def test_K_per_example_averages_to_the_enumerated_bound():
    d, net, m, states = tiny_case(T=4, seed=1)
    x0 = states[5:6].expand(20_000, -1)
    with torch.no_grad():
        K = K_per_example(d, net, x0, "exact", keys=Keys(0, torch.arange(len(x0))))
        mc = K_per_example(d, net, x0, "mc", n_t=2, keys=Keys(1, torch.arange(len(x0))))
    S = len(states)
    want = d.bound_const(x0[:1]).item()
    for t in range(2, d.T + 1):
        tt = torch.full((S,), t)
        q_t = torch.stack(d.marginal(x0[:1].expand(S, -1), tt)).exp()
        weight = torch.stack([q_t[states[s].long(), s, torch.arange(2)].prod() for s in range(S)])
        with torch.no_grad():
            kl = d.kl(d.q_posterior(x0[:S], states, tt), d.p_params(net(states, tt), states, tt)).sum(1)
        want -= (weight * kl).sum().item()
    for estimate in (K, mc):
        assert abs(estimate.mean().item() - want) < 4 * estimate.std().item() / math.sqrt(len(x0))


# ---- the sampler, the clamp, SMC ---------------------------------------------------------------------------------
def test_with_a_zero_network_samples_are_draws_from_the_prior_data():
    """For independent Cat(m) data the zero network's kernel is the exact reversal: samples have marginal m."""
    d = categorical(T=20, C=4, prior=[0.4, 0.3, 0.2, 0.1])

    def zero(xt, t):
        return torch.zeros(len(xt), 4, *xt.shape[1:])

    x, _ = d.sample(zero, (40_000, 3), torch.Generator().manual_seed(0))
    freq = torch.bincount(x.long().flatten(), minlength=4) / x.numel()
    assert (freq - torch.tensor([0.4, 0.3, 0.2, 0.1])).abs().max() < 4 * math.sqrt(0.25 / x.numel())


def test_clamp_and_smc_keep_the_known_positions():
    d = categorical(T=8, C=3)
    net = random_mlp(6, 3, 8, seed=2)
    x_known = torch.randint(3, (5, 6), generator=torch.Generator().manual_seed(0)).float()
    known = torch.zeros(5, 6, dtype=torch.bool)
    known[:, :2] = True
    p = d.clamp(d.forward_kernel(torch.zeros(5, 6), torch.full((5,), 3)), known, x_known)
    assert torch.equal(d.draw(p, torch.Generator().manual_seed(0))[known], x_known[known])
    assert torch.allclose(d.log_prob(p, x_known)[known], torch.zeros(10))
    with torch.no_grad():
        result = smc_sample(d, net, known, x_known, particles=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(result.x0[known], x_known[known]) and set(result.x0.unique().tolist()) <= {0.0, 1.0, 2.0}


# ---- the evaluate tasks on classes ----------------------------------------------------------------------------
def test_completion_inpainting_and_figures_on_classes(tmp_path):
    from dpm.data.array import ArrayDataModule
    from dpm.model.module import DiffusionModule
    from dpm.tasks import TASKS
    from tests.helpers import ConstantNet

    def task(name, dm, module, *overrides):
        cfg = compose(["ckpt_path=unused", f"task={name}", "progress=false", *overrides], config_name="evaluate")
        return TASKS[name](module, dm, cfg, tmp_path / name, torch.device("cpu"))

    def model(net, d):
        return DiffusionModule(net, d, optimizer=lambda params: torch.optim.Adam(params)).eval()

    markov = MarkovDataModule(n_train=50, n_val=10, n_test=30)
    markov.setup()
    m = model(random_mlp(20, 4, 10, seed=0), categorical(T=10, C=4))
    for particles, over_t in ((1, "constant"), (1, "diffused"), (3, "constant")):
        done = task("complete", markov, m, "complete.k=6", "complete.n=12", f"complete.particles={particles}",
                    f"r_over_t={over_t}")
        result = np.load(tmp_path / "complete" / "complete.npz")["result"]
        assert done["known_bins_exact"] is True and set(np.unique(result)) <= {0.0, 1.0, 2.0, 3.0}
    assert (tmp_path / "complete" / "complete.png").is_file()
    task("sample", markov, m)
    assert (tmp_path / "sample" / "samples.png").stat().st_size > 10_000
    np.save(tmp_path / "maps.npy", np.random.default_rng(0).integers(0, 3, (40, 8, 8)))
    maps = ArrayDataModule(path=str(tmp_path / "maps.npy"), n_classes=3, n_val=5, n_test=10)
    maps.setup()
    m = model(ConstantNet(3), categorical(T=10, C=3))
    done = task("inpaint", maps, m, "inpaint.n=6", "inpaint.mask=left")
    assert done["known_pixels_exact"] is True and 0 <= done["missing_equal_fraction"] <= 1
    task("sample", maps, m)
    assert (tmp_path / "sample" / "samples.png").is_file()
    with pytest.raises(ValueError, match=r"task=denoise needs a kernel that takes a Gaussian r \(GaussianR\); "
                                         r"categorical diffusion's kernels take DeltaR"):
        task("denoise", maps, m)


# ---- settings and refusals ---------------------------------------------------------------------------------------
def test_settings_are_checked_and_fitted():
    with pytest.raises(ValueError, match="diffusion.n_classes=1 is invalid"):
        categorical(C=1)
    with pytest.raises(ValueError, match=r"diffusion.prior=\[0.5, 0.5\] is invalid: .* 3 positive numbers"):
        categorical(C=3, prior=[0.5, 0.5])
    with pytest.raises(ValueError, match="needs integer classes 0..2; got values such as \\[3.0\\]"):
        categorical(C=3).check_data(torch.tensor([[0.0, 3.0]]))
    x0 = torch.tensor([[0.0, 1.0, 1.0, 3.0]])
    assert CategoricalDiffusion.fitted({"n_classes": None, "prior": None}, x0) == {
        "n_classes": 4, "prior": pytest.approx(class_frequencies(x0, 4))}
    assert class_frequencies(x0, 4)[2] > 0  # a class the data never show keeps a little mass: log m finite
    assert CategoricalDiffusion.fitted({"n_classes": 6, "prior": "uniform"}, x0, classes=4) == {}
    with pytest.raises(ValueError, match="needs integer classes"):
        CategoricalDiffusion.fitted({"n_classes": None, "prior": None}, torch.tensor([[0.5, 1.0]]))
    # resuming with the command that fitted them (null) continues; another number of classes is refused
    from dpm.app.resume import check_resume

    old = {"diffusion": {"_target_": "dpm.core.categorical.CategoricalDiffusion", "n_classes": 4,
                         "prior": [0.4, 0.3, 0.2, 0.1]}}
    assert check_resume(old, {"diffusion": {**old["diffusion"], "n_classes": None, "prior": None}}, "x.ckpt") == []
    with pytest.raises(ConfigError, match="diffusion.n_classes: 4 in the checkpoint, 5 now"):
        check_resume(old, {"diffusion": {**old["diffusion"], "n_classes": 5}}, "x.ckpt")
    with pytest.raises(ConfigError, match="schedule.learned=true is refused with categorical diffusion"):
        build(compose(["dataset=markov", "schedule=learned", "dataset.n_train=20", "dataset.n_val=4",
                       "dataset.n_test=4"]))


# ---- data: the Markov chain ----------------------------------------------------------------------------------------
def test_markov_data_have_their_stated_likelihood():
    P = transition_matrix(3, 0.7, False, seed=4)
    pi = stationary(P)
    assert np.allclose(pi @ P, pi) and np.allclose(P.sum(1), 1)
    assert np.allclose(transition_matrix(3, 0.7, True, seed=4), transition_matrix(3, 0.7, True, seed=4)[:1])
    dm = MarkovDataModule(n_classes=3, length=3, concentration=0.7, n_train=60_000, n_val=10, n_test=10, seed=4)
    dm.setup()
    x = dm.splits["train"]
    # every one of the 27 sequences as often as its exact probability says
    seqs = torch.tensor(list(itertools.product(range(3), repeat=3)), dtype=torch.float32)
    prob = markov_log_likelihood(seqs, dm.initial, dm.P).exp()
    assert prob.sum().item() == pytest.approx(1.0)
    freq = (x[:, None] == seqs[None]).all(2).double().mean(0)
    assert (freq - prob).abs().max() < 4 * math.sqrt(0.25 / len(x))
    assert dm.kind.classes == 3 and dm.kind.data == "sequence" and dm.scale == 1.0


# ---- data: a user's integer array, binarised MNIST -------------------------------------------------------------
def test_array_integer_classes_sequences_and_images(tmp_path):
    from dpm.data.array import ArrayDataModule

    rng = np.random.default_rng(0)
    np.save(tmp_path / "seq.npy", rng.integers(0, 5, (100, 12)))
    np.save(tmp_path / "maps.npy", rng.integers(0, 3, (60, 6, 6)).astype(np.uint8))
    seq = ArrayDataModule(path=str(tmp_path / "seq.npy"), n_classes="auto")
    seq.setup()
    assert seq.kind.classes == 5 and seq.kind.data == "sequence" and seq.kind.unit == "bits/seq"
    assert torch.equal(seq.splits["train"], seq.splits["train"].round()) and seq.scale == 1.0  # classes kept
    maps = ArrayDataModule(path=str(tmp_path / "maps.npy"), n_classes=4)  # given: a class the data never show
    maps.setup()
    assert maps.data_shape == (1, 6, 6) and maps.kind.classes == 4 and maps.kind.units_per_example == 36
    assert maps.kind.dequantization_width == 0 and maps.eval_info()["n_classes"] == 4
    with pytest.raises(ConfigError, match=r"seq.npy: with dataset.n_classes=3 every value must be an integer class "
                                          r"0..2; \d+ are not"):
        ArrayDataModule(path=str(tmp_path / "seq.npy"), n_classes=3).setup()
    np.save(tmp_path / "real.npy", rng.normal(size=(50, 4)))
    with pytest.raises(ConfigError, match="real.npy: with dataset.n_classes=.* must be an integer class"):
        ArrayDataModule(path=str(tmp_path / "real.npy"), n_classes="auto").setup()
    with pytest.raises(ConfigError, match="dataset.n_classes=1 is invalid"):
        ArrayDataModule(path=str(tmp_path / "seq.npy"), n_classes=1)
    # the run takes C from the data and fits m to them, recorded in its config
    cfg = compose(["dataset=array", f"dataset.path={tmp_path / 'seq.npy'}", "dataset.n_classes=auto",
                   "diffusion=categorical", "diffusion.prior=null", "schedule=binomial", "T=10"])
    dm, module = build(cfg)
    assert module.run_config["diffusion"]["n_classes"] == 5 and module.diffusion.n_outputs == 5
    assert module.run_config["diffusion"]["prior"] == pytest.approx(class_frequencies(dm.splits["train"], 5))
    # without n_classes the integers are vectors, scaled: categorical diffusion refuses them, naming the file
    with pytest.raises(ConfigError, match=r"seq.npy: categorical diffusion over \d classes needs integer classes"):
        build(compose(["dataset=array", f"dataset.path={tmp_path / 'seq.npy'}", "diffusion=categorical",
                       "schedule=binomial", "T=10"]))


def test_binarised_mnist5k_is_bits_on_the_mnist5k_splits():
    from dpm.data.mnist5k import BinaryMNIST5kDataModule, MNIST5kDataModule

    bits, grey = BinaryMNIST5kDataModule(), MNIST5kDataModule()
    bits.setup()
    grey.setup()
    assert bits.data_shape == (1, 28, 28) and bits.kind.classes == 2 and bits.kind.unit == "bits/pixel"
    assert set(bits.splits["test"].unique().tolist()) == {0.0, 1.0} and bits.kind.dequantization_width == 0
    for split in ("train", "val", "test"):  # the same images, thresholded at half of white
        assert torch.equal(bits.splits[split], (grey.denormalize(grey.splits[split]) >= 127.5 / 255).float())
    assert 0.1 < bits.splits["train"].mean().item() < 0.2


# ---- trained models (slow): the bound below the exact likelihood, samples with the data's marginals -------------
MARKOV_QUICK = ["dataset=markov", "T=50", "dataset.n_train=5000", "dataset.n_val=500", "dataset.n_test=1000",
                "trainer.val_check_interval=1000", "trainer.enable_progress_bar=false", "latest_link=null",
                "progress=false", "callbacks=minimal", "logger=none"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("iid,prior,concentration", [(False, "null", 0.5), (True, "uniform", 2.0)],
                         ids=["markov", "iid"])
def test_trained_K_stays_below_the_exact_likelihood_and_samples_have_the_data_marginals(tmp_path, iid, prior,
                                                                                       concentration):
    """A Markov chain with m fitted to its class frequencies; independent positions with a uniform m, so the network
    alone must learn their class frequencies (with m fitted to them the zero network would already be their exact
    reversal; concentration 2: none of them rare, (0.19, 0.28, 0.11, 0.42)). eval.json sets K beside the exact
    log-likelihood; for the independent positions, each position's class frequencies in 4,000 samples are within 4
    standard errors of the exact ones (the samples' and the training split's)."""
    import json

    from dpm.app.build import restore
    from dpm.app.checkpoint import load_checkpoint
    from dpm.app.train import train
    from dpm.model.sampling import sample

    # the independent positions' model is asked for its marginals: more examples and steps, so that what is measured
    # is the model, not the draw of its training split (whose frequencies enter the standard error below)
    sizes = ["dataset.n_train=20000", "trainer.max_steps=10000"] if iid else ["trainer.max_steps=2500"]
    train(compose([*MARKOV_QUICK, f"dataset.iid={str(iid).lower()}", f"diffusion.prior={prior}",
                   f"dataset.concentration={concentration}", *sizes]), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["diffusion"] == "categorical" and saved["estimator"] == "exact" and saved["unit"] == "bits/seq"
    assert saved["gap_to_truth"] == pytest.approx(saved["K"] - saved["true_log_likelihood"], abs=1e-9)
    assert saved["gap_to_truth"] < 3 * saved["gap_to_truth_stderr"]  # a bound: not above the truth
    assert saved["K_minus_L_null"] > 1.0  # and the model learned more than the prior pi
    if not iid:
        return
    dm, module, _ = restore(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    x, _ = sample(module.eval(), (4000, 20), torch.Generator().manual_seed(0), "sampling", False)
    exact = dm.initial.float()[:, None]  # every position's marginal, [C, 1]
    assert (exact - 0.25).abs().max() > 0.1  # far from the prior's
    freq = torch.stack([(x == k).float().mean(0) for k in range(4)])  # [C, L]
    # the samples' frequencies scatter about the model's marginals, which were learned from the training split's
    # frequencies, which scatter about the exact ones: both variances
    z = (freq - exact) / (exact * (1 - exact) * (1 / len(x) + 1 / len(dm.splits["train"]))).sqrt()
    assert z.abs().max() < 4, z
