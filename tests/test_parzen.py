"""The Parzen-window estimator (dpm.core.parzen) against a direct float64 computation written from Goodfellow et al.'s
definition, one test image and one sigma at a time."""

import math

import numpy as np
import pytest
import torch

from dpm.core.parzen import choose_sigma, parzen_log_likelihood, sigma_grid
from dpm.core.stats import mean_and_stderr


def direct(x: np.ndarray, samples: np.ndarray, sigma: float) -> np.ndarray:
    """log mean_j exp(-|x - s_j|^2 / (2 sigma^2)) - D log(sigma sqrt(2 pi)) for each row of x, float64, with
    the max subtracted by hand (the public code's log_mean_exp)."""
    out = []
    for xi in x.astype(np.float64):
        a = -0.5 * (((xi[None] - samples.astype(np.float64)) / sigma) ** 2).sum(1)
        m = a.max()
        out.append(m + math.log(np.exp(a - m).mean()) - x.shape[1] * math.log(sigma * math.sqrt(2 * math.pi)))
    return np.array(out)


@pytest.mark.parametrize("D", [5, 784])
def test_matches_a_direct_float64_computation(D):
    rng = np.random.default_rng(0)
    x, samples = rng.random((23, D)).astype(np.float32), rng.random((37, D)).astype(np.float32)
    sigmas = sigma_grid()
    got = parzen_log_likelihood(torch.from_numpy(x), torch.from_numpy(samples), sigmas, chunk_x=4, chunk_s=10)
    assert got.shape == (10, 23) and got.dtype == torch.float64
    for k, sigma in enumerate(sigmas.tolist()):
        np.testing.assert_allclose(got[k].numpy(), direct(x, samples, sigma), rtol=0, atol=1e-6)


def test_images_are_flattened_and_chunks_do_not_matter():
    g = torch.Generator().manual_seed(1)
    x, samples = torch.rand(9, 1, 4, 4, generator=g), torch.rand(14, 1, 4, 4, generator=g)
    whole = parzen_log_likelihood(x, samples, 0.3, chunk_x=100, chunk_s=100)
    pieces = parzen_log_likelihood(x.flatten(1), samples.flatten(1), 0.3, chunk_x=2, chunk_s=3)
    torch.testing.assert_close(whole, pieces, rtol=0, atol=1e-12)
    np.testing.assert_allclose(whole[0].numpy(), direct(x.flatten(1).numpy(), samples.flatten(1).numpy(), 0.3),
                               atol=1e-6, rtol=0)


def test_sigma_grid_is_the_estimators():
    np.testing.assert_allclose(sigma_grid().numpy(), np.logspace(-1, 0, 10), rtol=1e-15)


def test_chosen_sigma_is_the_argmax_on_validation():
    rng = np.random.default_rng(2)
    samples = rng.random((200, 16)) ** 3  # dark images, as most MNIST pixels are
    val = rng.random((50, 16)) ** 3
    sigmas = sigma_grid()
    sigma, curve = choose_sigma(torch.from_numpy(val), torch.from_numpy(samples), sigmas, chunk_x=7, chunk_s=30)
    means = np.array([direct(val, samples, s).mean() for s in sigmas.tolist()])
    np.testing.assert_allclose(curve.numpy(), means, atol=1e-6, rtol=0)
    assert sigma == sigmas[int(means.argmax())].item()
    assert 0 < int(means.argmax()) < len(sigmas) - 1  # an interior optimum: the choice is not trivially an end


def test_mean_and_stderr_as_the_public_code():
    ll = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    mean, se = mean_and_stderr(ll, ddof=0)  # Parzen's: numpy's default std, as Goodfellow et al.'s code
    assert mean == 3.5 and se == pytest.approx(np.std(ll.numpy()) / 2)
    assert mean_and_stderr(ll, ddof=1)[1] == pytest.approx(np.std(ll.numpy(), ddof=1) / 2)  # the bound's
