"""The baselines beside K: each fitted model's log-likelihood against an independent computation (scipy, enumeration
of every sequence), and eval.json's fields (the best chosen on validation, K - best paired per example, the file's
units)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from dpm.core import baselines as fit
from dpm.data.array import ArrayDataModule
from dpm.tasks.baselines import baseline_fields, gaussian_mixture


def test_gaussian_is_scipys_multivariate_normal_with_the_ridge():
    rng = np.random.default_rng(0)
    train = rng.multivariate_normal([1.0, -2.0, 0.5], [[2, 0.8, 0.1], [0.8, 1, -0.3], [0.1, -0.3, 0.5]], 300)
    test = rng.normal(size=(50, 3))
    mean, cov = fit.gaussian_fit(torch.from_numpy(train))
    ours = fit.gaussian_log_prob(torch.from_numpy(test), mean, cov).numpy()
    # maximum likelihood: numpy's biased covariance, plus the ridge on the diagonal
    ref = stats.multivariate_normal(train.mean(0), np.cov(train.T, bias=True) + fit.RIDGE * np.eye(3)).logpdf(test)
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_bernoulli_is_scipys_with_laplaces_rule():
    rng = np.random.default_rng(1)
    train = (rng.random((40, 6)) < [0.1, 0.5, 0.9, 0.0, 1.0, 0.3]).astype(float)  # two bits never vary
    test = (rng.random((20, 6)) < 0.5).astype(float)
    probs = fit.independent_fit(torch.from_numpy(train))
    ours = fit.independent_log_prob(torch.from_numpy(test), probs).numpy()
    laplace = (train.sum(0) + 1) / (len(train) + 2)
    ref = stats.bernoulli(laplace).logpmf(test).sum(1)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    assert np.isfinite(ours).all()  # a value never seen in training keeps a finite log-likelihood


@pytest.mark.parametrize("C", [2, 3])
def test_markov_chain_counts_transitions_and_is_a_distribution_over_every_sequence(C):
    rng = np.random.default_rng(2)
    L = 4
    train = np.zeros((200, L))
    train[:, 0] = rng.integers(0, C, 200) * (rng.random(200) < 0.6)
    for i in range(1, L):
        stay = rng.random(200) < 0.8
        train[:, i] = np.where(stay, train[:, i - 1], rng.integers(0, C, 200))
    first, transitions = fit.markov_fit(torch.from_numpy(train), C)
    every = np.array(list(itertools.product(range(C), repeat=L)), dtype=float)
    ours = fit.markov_log_prob(torch.from_numpy(every), first, transitions).numpy()
    assert math.isclose(np.exp(ours).sum(), 1.0, rel_tol=1e-12)  # the C^L sequences' probabilities sum to one

    def by_counting(x):  # p(x_1) prod p(x_l | x_{l-1}) from the training counts, position by position
        logp = math.log((train[:, 0] == x[0]).sum() + 1) - math.log(len(train) + C)
        for i in range(1, L):
            ctx = train[:, i - 1] == x[i - 1]
            logp += math.log((train[ctx, i] == x[i]).sum() + 1) - math.log(ctx.sum() + C)
        return logp
    np.testing.assert_allclose(ours, [by_counting(x) for x in every], rtol=1e-12)
    independent = fit.independent_log_prob(torch.from_numpy(every), fit.independent_fit(torch.from_numpy(train), C))
    assert math.isclose(independent.exp().sum().item(), 1.0, rel_tol=1e-12)


def test_a_gaussian_mixture_finds_separated_clusters_on_validation():
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    draw = lambda n: centres[rng.integers(0, 3, n)] + 0.5 * rng.normal(size=(n, 2))  # noqa: E731
    model, log_prob = gaussian_mixture(torch.from_numpy(draw(600)), torch.from_numpy(draw(200)), seed=0)
    assert model.n_components == 3
    test = draw(100)
    truth = np.log(np.mean([stats.multivariate_normal(c, 0.25 * np.eye(2)).pdf(test) for c in centres], 0))
    assert abs(log_prob(torch.from_numpy(test)).numpy().mean() - truth.mean()) < 0.1


def test_eval_json_fields_pair_K_with_the_best_baseline_in_the_files_units(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.multivariate_normal([100.0, -5.0], [[400.0, 10.0], [10.0, 1.0]], 400)
    np.save(tmp_path / "v.npy", x)
    dm = ArrayDataModule(path=str(tmp_path / "v.npy"))
    dm.setup()
    index = torch.arange(len(dm.splits["test"]))
    K = torch.from_numpy(rng.normal(-3.0, 0.5, len(index)))  # any per-example values in bits
    jacobian = dm.raw_log2_jacobian()
    out = baseline_fields(dm, "test", index, K, jacobian)
    assert set(out["baselines"]) == {"gaussian", "gaussian_mixture"}
    # independently: the Gaussian fitted to the file's own training values, scored on its test values, in bits
    raw = dm.load()
    ref = stats.multivariate_normal(raw["train"].double().mean(0).numpy(),
                                    np.cov(raw["train"].double().numpy().T, bias=True)).logpdf(raw["test"].double())
    gauss = out["baselines"]["gaussian"]
    assert gauss["log_likelihood_raw"] == pytest.approx(ref.mean() / math.log(2), abs=1e-3)
    assert gauss["log_likelihood"] == pytest.approx(gauss["log_likelihood_raw"] + jacobian)
    best = out["best_baseline"]
    assert out["baselines"][best]["val_log_likelihood"] == max(b["val_log_likelihood"] for b in out["baselines"].values())
    per_example = {"gaussian": ref / math.log(2) + jacobian}
    if best == "gaussian":
        diffs = K.numpy() - per_example["gaussian"]
        assert out["K_minus_best_baseline"] == pytest.approx(diffs.mean(), abs=1e-3)
        assert out["K_minus_best_baseline_stderr"] == pytest.approx(diffs.std(ddof=1) / math.sqrt(len(diffs)), rel=1e-3)
    else:
        assert out["K_minus_best_baseline"] == pytest.approx(K.mean().item() - out["baselines"][best]["log_likelihood"])


def test_binary_sequences_get_bernoulli_and_markov_and_images_none(tmp_path):
    rng = np.random.default_rng(5)
    np.save(tmp_path / "bits.npy", (rng.random((200, 8)) < 0.3).astype(np.uint8))
    np.save(tmp_path / "im.npy", rng.integers(0, 256, (60, 4, 4), dtype=np.uint8))
    bits = ArrayDataModule(path=str(tmp_path / "bits.npy"))
    bits.setup()
    out = baseline_fields(bits, "test", torch.arange(5), torch.zeros(5), None)
    assert set(out["baselines"]) == {"bernoulli", "markov"} and "log_likelihood_raw" not in out["baselines"]["markov"]
    images = ArrayDataModule(path=str(tmp_path / "im.npy"), n_levels=256)
    images.setup()
    assert baseline_fields(images, "test", torch.arange(5), torch.zeros(5), 0.0) == {}


def test_class_sequences_get_independent_and_markov_baselines_that_approach_a_markov_chains_truth():
    """dataset=markov (C = 4): the fitted Markov chain's test log-likelihood is within its fitting cost (a few hundred
    parameters on 10,000 sequences: ~0.02 nats) of the exact one; positions taken as independent are far below."""
    from dpm.data.markov import MarkovDataModule
    from dpm.tasks.baselines import fitted

    dm = MarkovDataModule(n_classes=4, length=20, concentration=0.5, n_train=10000, n_val=500, n_test=2000)
    models = fitted(dm)
    assert set(models) == {"independent", "markov"}
    x = dm.splits["test"]
    truth = dm.true_log_likelihood(x).mean().item()
    markov = models["markov"][0](x).mean().item()
    independent = models["independent"][0](x).mean().item()
    assert truth - 0.1 < markov < truth + 0.05 and independent < markov - 1.0


def test_vector_baselines_in_the_files_units_do_not_depend_on_the_models_scaling(tmp_path):
    """Columns in units from 0.01 to 100: under one global scale (dataset.scaling=global) the small columns are tiny
    in the model's units; the baselines, fitted to each column at unit variance, give the same log-likelihood of the
    file's values under every scaling (a full-covariance Gaussian is affine invariant: computed here with scipy)."""
    from dpm.data.array import ArrayDataModule
    from dpm.tasks.baselines import fitted

    rng = np.random.default_rng(4)
    scales = 10.0 ** np.linspace(-2, 2, 5)
    cov = np.array([[0.7 ** abs(i - j) for j in range(5)] for i in range(5)]) * np.outer(scales, scales)
    rows = rng.multivariate_normal(np.zeros(5), cov, size=600)
    np.save(tmp_path / "x.npy", rows)
    raw = {}
    for scaling in ("global", "column", "whiten"):
        dm = ArrayDataModule(path=str(tmp_path / "x.npy"), scaling=scaling, seed=0)
        models = fitted(dm)
        x = dm.splits["test"]
        jacobian = dm.raw_log2_jacobian() * math.log(2)  # nats: log |det S|
        raw[scaling] = {name: (f(x) - jacobian).numpy() for name, (f, _) in models.items()}
    train = dm.denormalize(dm.splits["train"]).double().numpy()
    test = dm.denormalize(dm.splits["test"]).double().numpy()
    ref = stats.multivariate_normal(train.mean(0), np.cov(train.T, bias=True)).logpdf(test)
    for scaling, found in raw.items():
        np.testing.assert_allclose(found["gaussian"], ref, rtol=1e-4, err_msg=scaling)
        np.testing.assert_allclose(found["gaussian_mixture"], raw["column"]["gaussian_mixture"], rtol=1e-3,
                                   err_msg=scaling)
