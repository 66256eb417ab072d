"""Keyed draws (dpm.core.keyed): splitmix64 on int64 tensors against a Python reference, the statistics of its uniforms
and normals, independence across keys, and K per example that does not depend on the batch it is computed in."""

import math

import pytest
import torch

from dpm.core.bound import K_per_example, strata_edges, stratified_t
from dpm.core.stats import mean_and_stderr
from dpm.data.base import SPLITS
from dpm.data.images import ImageDataModule
from dpm.core.keyed import (DEQUANT, GOLDEN, MASK64, NOISE, Keys, dequantize, key_bits, keyed_normal, keyed_uniform, mix,
                       mix_int, step_generator)
from tests.helpers import diffusion_and_data

N = 100_000


def test_mix_is_splitmix64_bit_for_bit():
    # the first output of the reference splitmix64 seeded with 0 (Vigna's splitmix64.c)
    assert key_bits(torch.zeros(1, dtype=torch.int64), 1).item() & MASK64 == 0xE220A8397B1DCDAF
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randint(-2**63, 2**63 - 1, (2000,), generator=g, dtype=torch.int64),
                   torch.tensor([0, 1, -1, 2**63 - 1, -2**63])])
    assert [v & MASK64 for v in mix(x).tolist()] == [mix_int(v) for v in x.tolist()]
    assert GOLDEN & MASK64 == 0x9E3779B97F4A7C15


def ks_statistic(sample: torch.Tensor, cdf) -> float:
    x, _ = sample.double().sort()
    F = cdf(x)
    n = len(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - F).max().item(), (F - (i - 1) / n).max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniforms_are_uniform_and_strictly_inside_the_unit_interval(dtype):
    u = keyed_uniform(7, torch.arange(N // 10), (NOISE, 3), (10,), dtype).flatten()
    assert u.dtype == dtype and u.min() > 0 and u.max() < 1
    assert abs(u.double().mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / N)
    assert u.double().var().item() == pytest.approx(1 / 12, rel=0.02)
    assert ks_statistic(u, lambda x: x) < 1.95 / math.sqrt(N)  # the 0.1% critical value


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normals_are_standard_normal(dtype):
    z = keyed_normal(7, torch.arange(N // 9), (NOISE, 3), (3, 3), dtype).flatten()
    assert z.dtype == dtype and torch.isfinite(z).all()
    assert abs(z.double().mean().item()) < 4 / math.sqrt(len(z))
    assert z.double().var().item() == pytest.approx(1.0, rel=0.02)
    assert ks_statistic(z, lambda x: torch.special.ndtr(x)) < 1.95 / math.sqrt(len(z))
    tail = (z.abs() > 3).double().mean().item()  # 0.27%
    assert abs(tail - 0.0027) < 4 * math.sqrt(0.0027 / len(z))
    assert z.double().pow(4).mean().item() == pytest.approx(3.0, rel=0.05)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.double().flatten(), b.double().flatten()]))[0, 1].item()


def test_draws_of_neighbouring_keys_and_counters_are_uncorrelated():
    index = torch.arange(N)
    base = keyed_normal(1, index, (NOISE, 5), (2,))
    others = {
        "next index": keyed_normal(1, index + 1, (NOISE, 5), (2,)),
        "next seed": keyed_normal(2, index, (NOISE, 5), (2,)),
        "next t": keyed_normal(1, index, (NOISE, 6), (2,)),
        "other purpose": keyed_normal(1, index, (DEQUANT, 5), (2,)),
    }
    bound = 4 / math.sqrt(N)
    for name, other in others.items():
        assert abs(corr(base, other)) < bound, name
        assert not torch.equal(base, other), name
    assert abs(corr(base[:, 0], base[:, 1])) < bound  # the two normals of one Box-Muller pair
    z = keyed_normal(1, index[: N // 4], (NOISE, 5), (8,))
    assert abs(corr(z[:, :-1], z[:, 1:])) < 4 / math.sqrt(z[:, 1:].numel())  # consecutive counters
    u = keyed_uniform(1, index, (NOISE, 5))
    assert abs(corr(u, keyed_uniform(1, index + 1, (NOISE, 5)))) < bound
    # the joint histogram of neighbouring examples' uniforms is flat
    hist = torch.histc((torch.floor(u[:-1] * 4) * 4 + torch.floor(u[1:] * 4)).float(), bins=16, min=0, max=16)
    expected = (N - 1) / 16
    assert ((hist - expected) ** 2 / expected).sum().item() < 40  # chi^2 with 15 dof: 0.05% at 40


def test_an_example_gets_the_same_numbers_in_any_batch():
    index = torch.randperm(500, generator=torch.Generator().manual_seed(0))
    t = torch.randint(2, 100, (500,), generator=torch.Generator().manual_seed(1))
    full = Keys(3, index).normal((NOISE, t), (4, 5))
    perm = torch.randperm(500)
    assert torch.equal(Keys(3, index[perm]).normal((NOISE, t[perm]), (4, 5)), full[perm])
    parts = [Keys(3, i).normal((NOISE, tt), (4, 5)) for i, tt in zip(index.split(7), t.split(7))]
    assert torch.equal(torch.cat(parts), full)
    # a per-example stream part equals the same int given to every example
    assert torch.equal(Keys(3, index[t == t[0]]).normal((NOISE, int(t[0])), (4, 5)), full[t == t[0]])
    assert torch.equal(Keys(3, index).repeat(3).index, index.repeat(3))
    with pytest.raises(ValueError, match="integer tensor"):
        Keys(0, torch.rand(5))
    with pytest.raises(ValueError, match="float32 or float64"):
        Keys(0, index).uniform((NOISE,), (2,), torch.bfloat16)


def test_keyed_dequantisation_is_one_bin_wide_and_per_example():
    x0 = torch.zeros(300, 1, 4, 4)
    index = torch.arange(1000, 1300)
    y = dequantize(x0, 0.25, Keys(0, index))
    assert y.abs().max() < 0.125 and y.std().item() == pytest.approx(0.25 / math.sqrt(12), rel=0.05)
    assert torch.equal(dequantize(x0[50:80], 0.25, Keys(0, index[50:80])), y[50:80])
    assert torch.equal(dequantize(x0, 0.0, Keys(0, index)), x0)


class TinyImages(ImageDataModule):
    n_levels = 17

    def make_split(self, split):
        g = torch.Generator().manual_seed(SPLITS.index(split))
        return self.to_raw(torch.randint(0, 17, (40, 1, 4, 4), generator=g).numpy())


def test_image_data_module_dequantises_with_keys():
    dm = TinyImages()
    dm.setup()
    x0 = dm.splits["val"]
    index = torch.arange(len(x0))
    y = dm.dequantize(x0, Keys(5, index))
    assert torch.equal(dm.dequantize(x0[3:9], Keys(5, index[3:9])), y[3:9])
    assert 0 < (y - x0).abs().max() <= dm.kind.dequantization_width / 2
    assert not torch.equal(dm.dequantize(x0, Keys(6, index)), y)
    g = step_generator(0, 0, 3)
    assert torch.equal(dm.dequantize(x0, generator=g), dm.dequantize(x0, generator=step_generator(0, 0, 3)))


def test_step_generator_depends_on_seed_rank_and_step_only():
    draws = lambda g: torch.randn(5, generator=g)  # noqa: E731
    g = step_generator(0, 1, 10)
    a = draws(g)
    assert torch.equal(draws(step_generator(0, 1, 10, generator=g)), a)  # reseeding reuses the generator
    assert step_generator(0, 1, 10, generator=g) is g
    for other in [(1, 1, 10), (0, 0, 10), (0, 1, 11)]:
        assert not torch.equal(draws(step_generator(*other)), a)


def test_keyed_stratified_t_covers_every_stratum_and_is_per_example():
    T, n_t = 40, 6
    t, w = stratified_t(4000, T, n_t, keys=Keys(0, torch.arange(4000)))
    edges = strata_edges(T, n_t)
    for k in range(n_t):  # every value of every (small) stratum is drawn, and nothing outside it
        assert set(t[k].tolist()) == set(range(2 + edges[k], 2 + edges[k + 1]))
    assert w.sum().item() == T - 1
    t_part, _ = stratified_t(7, T, n_t, keys=Keys(0, torch.arange(100, 107)))
    assert torch.equal(t_part, t[:, 100:107])
    with pytest.raises(ValueError, match="not both"):
        stratified_t(5, T, 2, torch.Generator(), keys=Keys(0, torch.arange(5)))
    with pytest.raises(ValueError, match="4 keys for a batch of 5"):
        stratified_t(5, T, 2, keys=Keys(0, torch.arange(4)))


@pytest.mark.parametrize("kind", ["gaussian", "binomial"])
@pytest.mark.parametrize("estimator,n_t", [("exact", 1), ("mc", 1), ("mc", 5)])
def test_keyed_K_does_not_depend_on_the_batch_split(kind, estimator, n_t):
    d, net, x0 = diffusion_and_data(kind)
    index = torch.arange(1000, 1064)
    with torch.no_grad():
        whole = K_per_example(d, net, x0, estimator, n_t, keys=Keys(9, index))
        parts = torch.cat([K_per_example(d, net, x, estimator, n_t, keys=Keys(9, i))
                           for x, i in zip(x0.split(7), index.split(7))])
        perm = torch.randperm(64)
        shuffled = K_per_example(d, net, x0[perm], estimator, n_t, keys=Keys(9, index[perm]))
        other_seed = K_per_example(d, net, x0, estimator, n_t, keys=Keys(10, index))
    assert torch.allclose(parts, whole, rtol=1e-6, atol=1e-6 * whole.abs().mean().item())
    assert torch.allclose(shuffled, whole[perm], rtol=1e-6, atol=1e-6 * whole.abs().mean().item())
    assert not torch.allclose(other_seed, whole, rtol=1e-3)  # the keys do drive the draws


@pytest.mark.parametrize("kind", ["gaussian", "binomial"])
def test_keyed_estimators_agree_with_exact(kind):
    """Keyed draws are good draws: the keyed mc estimate of K matches the keyed exact one on many examples."""
    d, net, x0 = diffusion_and_data(kind)
    x0 = x0.repeat(40, 1)
    keys = Keys(0, torch.arange(len(x0)))
    with torch.no_grad():
        exact = K_per_example(d, net, x0, "exact", keys=keys)
        mc = K_per_example(d, net, x0, "mc", 3, keys=keys)
    diff, se = mean_and_stderr(mc - exact, ddof=1)
    assert abs(diff) < 4 * se
