"""Perturbed reverse kernels (dpm.core.posterior) against independent computations (quadrature of the normalised
product on a grid, enumeration of the two states of a bit), and the perturbed sampler against the plain one."""

import math

import pytest
import torch

from dpm.core.binomial import BinomialDiffusion
from dpm.core.gaussian import GaussianDiffusion
from dpm.core.posterior import (BernoulliR, DeltaR, GaussianR, SmoothR, bernoulli_product, first_order_shift,
                           gaussian_product, perturbation, r_exponent)
from dpm.core.schedules import Schedule
from tests.helpers import ConstantNet, ExactHeartbeatKernel, random_mlp

GRID = torch.linspace(-12, 12, 200001, dtype=torch.float64)


def moments(log_density: torch.Tensor) -> tuple[float, float]:
    """Mean and variance of the normalised density exp(log_density) on GRID (Riemann sum, float64)."""
    w = torch.softmax(log_density, 0)
    mean = (w * GRID).sum()
    return mean.item(), (w * (GRID - mean) ** 2).sum().item()


def log_normal(x, mu, var):
    return -0.5 * (x - mu) ** 2 / var - 0.5 * math.log(2 * math.pi * var)


@pytest.mark.parametrize("mu,var,mu_r,var_r", [(0.3, 0.5, -1.2, 2.0), (1.5, 0.01, 0.0, 1.0), (-2.0, 3.0, 1.0, 0.1)])
def test_gaussian_product_matches_quadrature(mu, var, mu_r, var_r):
    mean, variance = moments(log_normal(GRID, mu, var) + log_normal(GRID, mu_r, var_r))
    p = (torch.tensor([mu], dtype=torch.float64), torch.tensor([math.log(var)], dtype=torch.float64))
    mu_post, logvar_post = gaussian_product(p, torch.tensor([mu_r], dtype=torch.float64), var_r)
    assert mu_post.item() == pytest.approx(mean, abs=1e-8)
    assert math.exp(logvar_post.item()) == pytest.approx(variance, rel=1e-6)


def test_first_order_shift_is_eq61_and_first_order_accurate():
    """r(x) = sigmoid(a x + b): the shift is var * d/dx log r at the mean (the variance, not the standard
    deviation), and its error against the exact normalised product shrinks as var^2."""
    a, b, mu = 3.0, 0.5, -0.4
    log_r = lambda x: torch.nn.functional.logsigmoid(a * x + b).sum(1)  # noqa: E731  [N, 1] -> [N]
    grad = a * (1 - torch.sigmoid(torch.tensor(a * mu + b, dtype=torch.float64))).item()
    errors = []
    for var in (1e-2, 1e-3):
        p = (torch.tensor([[mu]], dtype=torch.float64), torch.tensor([[math.log(var)]], dtype=torch.float64))
        shifted, logvar = first_order_shift(p, log_r)
        assert shifted.item() == pytest.approx(mu + var * grad, rel=1e-12)
        assert torch.equal(logvar, p[1])
        exact, _ = moments(log_normal(GRID, mu, var) + torch.nn.functional.logsigmoid(a * GRID + b))
        errors.append(abs(shifted.item() - exact))
    assert errors[1] < errors[0] / 50  # second order: 10x less variance, ~100x less error


@pytest.mark.parametrize("c,r0,r1", [(0.3, 0.2, 0.9), (0.99, 5.0, 0.1), (1e-3, 1.0, 3.0)])
def test_bernoulli_product_enumerates_the_two_states(c, r0, r1):
    expected = c * r1 / (c * r1 + (1 - c) * r0)
    (got,) = bernoulli_product((torch.tensor(c, dtype=torch.float64),), torch.tensor(r1 / (r0 + r1),
                                                                                     dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_r_exponent():
    T = 10
    t = torch.arange(T, 0, -1)
    assert torch.equal(r_exponent(t, T, "constant"), torch.ones(T, dtype=torch.float64))
    w = r_exponent(t, T, "tempered")
    assert w[0].item() == pytest.approx(1 / T) and w[-1].item() == 1.0  # 1/T into x_{T-1}, all of r into x_0
    with pytest.raises(ValueError, match="r_over_t='sometimes'.*constant"):
        r_exponent(t, T, "sometimes")


def test_tempered_factors_are_powers_of_r():
    """r^w by quadrature (Gaussian) and by enumeration (a bit), at the step t = 4 of T = 10 (w = 0.7)."""
    T, t = 10, torch.tensor([4])
    w = (T - 4 + 1) / T
    mu, var, y, var_r = 0.2, 0.4, 1.5, 0.3
    p = (torch.tensor([mu], dtype=torch.float64), torch.tensor([math.log(var)], dtype=torch.float64))
    got = perturbation(GaussianDiffusion(Schedule("sd2015", T=T)), [GaussianR(torch.tensor([y], dtype=torch.float64), var_r)], "tempered")(
        p, p[0], t)
    mean, variance = moments(log_normal(GRID, mu, var) + w * log_normal(GRID, y, var_r))
    assert got[0].item() == pytest.approx(mean, abs=1e-8)
    assert math.exp(got[1].item()) == pytest.approx(variance, rel=1e-6)
    c, r0, r1 = 0.3, 0.2, 0.9
    (got,) = perturbation(BinomialDiffusion(Schedule("binomial", T=T)), [BernoulliR(r1 / (r0 + r1))], "tempered")(
        (torch.tensor([c], dtype=torch.float64),), None, t)
    assert got.item() == pytest.approx(c * r1**w / (c * r1**w + (1 - c) * r0**w), rel=1e-12)


def test_clamp_puts_all_mass_on_the_known_values():
    known = torch.tensor([[True, False, True]])
    values = torch.tensor([[0.123456789, 9.0, -3.3]])
    g = GaussianDiffusion(Schedule("sd2015", T=5))
    p = g.clamp((torch.zeros(1, 3), torch.zeros(1, 3)), known, values)
    x = g.draw(p, torch.Generator().manual_seed(0))
    assert torch.equal(x[known], values[known]) and x[0, 1] != 9.0
    b = BinomialDiffusion(Schedule("binomial", T=5), p=0.2)
    bits = torch.tensor([[1.0, 0.0, 0.0]])
    x = b.draw(b.clamp((torch.full((1, 3), 0.5),), known, bits), torch.Generator().manual_seed(0))
    assert torch.equal(x[known], bits[known])


def test_factor_of_the_wrong_kind_is_refused():
    with pytest.raises(ValueError, match=r"a kernel that takes a Gaussian r \(GaussianR\); binomial diffusion's "
                                         r"kernels take DeltaR \(a delta r on known coordinates\), BernoulliR"):
        perturbation(BinomialDiffusion(Schedule("binomial", T=5)), [GaussianR(torch.zeros(1), 1.0)])
    with pytest.raises(ValueError, match=r"takes an r over bits \(BernoulliR\); gaussian diffusion's"):
        perturbation(GaussianDiffusion(Schedule("sd2015", T=5)), [BernoulliR(0.5)])
    with pytest.raises(ValueError, match="r_over_t=diffused applies to a delta r .* not to SmoothR"):
        perturbation(GaussianDiffusion(Schedule("sd2015", T=5)), [SmoothR(lambda x: x.sum(1))], "diffused")


# ---- the sampler ---------------------------------------------------------------------------------------
def gaussian_setup(T=8, D=3):
    return GaussianDiffusion(Schedule("sd2015", T=T)), random_mlp(D, 2, T, seed=1)


def binomial_setup(T=8, D=6):
    return BinomialDiffusion(Schedule("binomial", T=T), p=0.3), random_mlp(D, 1, T, seed=2, scale=1.0)


def test_the_hook_sees_every_step_including_the_fixed_last_one():
    d, net = gaussian_setup()
    seen = []
    d.sample(net, (4, 3), torch.Generator().manual_seed(0), perturb=lambda p, x, t: seen.append(t.tolist()) or p)
    assert seen == [[t] * 4 for t in range(d.T, 0, -1)]


def flat_factors(kind, N, D):
    """Factors r that are constant in x, for each kind."""
    nothing_known = torch.zeros(N, D, dtype=torch.bool)
    anything = torch.randn(N, D)
    if kind == "gaussian":
        return {"gaussian product, var_r = inf": [GaussianR(anything, math.inf)],
                "Eq. 61, log r constant": [SmoothR(lambda x: torch.zeros(len(x)))],
                "Eq. 61, log r = 0 * x": [SmoothR(lambda x: 0.0 * x.sum(1))],
                "clamp, no known coordinate": [DeltaR(nothing_known, anything)]}
    return {"Bernoulli product, d = 1/2": [BernoulliR(0.5)],
            "clamp, no known coordinate": [DeltaR(nothing_known, anything.gt(0).float())]}


@pytest.mark.parametrize("kind", ["gaussian", "binomial"])
@pytest.mark.parametrize("over_t", ["constant", "tempered", "diffused"])
def test_constant_r_gives_exactly_the_plain_samples(kind, over_t):
    d, net = gaussian_setup() if kind == "gaussian" else binomial_setup()
    N, D = 64, (3 if kind == "gaussian" else 6)
    plain, _ = d.sample(net, (N, D), torch.Generator().manual_seed(7))
    for name, factors in flat_factors(kind, N, D).items():
        if over_t == "diffused" and not name.startswith("clamp"):
            continue  # diffused is for a delta r only
        perturb = perturbation(d, factors, over_t)
        got, _ = d.sample(net, (N, D), torch.Generator().manual_seed(7), perturb=perturb)
        assert torch.equal(got, plain), name
        g = torch.Generator().manual_seed(7)  # the same start passed in as x_T
        got, _ = d.sample(net, (N, D), g, perturb=perturb, x_T=d.prior_sample((N, D), g))
        assert torch.equal(got, plain), name


@pytest.mark.parametrize("kind", ["gaussian", "binomial"])
@pytest.mark.parametrize("over_t", ["constant", "diffused"])
def test_inpainted_known_coordinates_are_exact(kind, over_t):
    d, net = gaussian_setup(D=6) if kind == "gaussian" else binomial_setup()
    N, D = 50, 6
    g = torch.Generator().manual_seed(3)
    x_known = torch.randn(N, D, generator=g) if kind == "gaussian" else torch.randint(0, 2, (N, D), generator=g).float()
    known = torch.rand(N, D, generator=g) < 0.5
    x_T = torch.where(known, x_known, d.prior_sample((N, D), g))
    x0, kept = d.sample(net, (N, D), g, keep=tuple(range(d.T + 1)), perturb=perturbation(
        d, [DeltaR(known, x_known)], over_t), x_T=x_T)
    assert torch.equal(kept[d.T], x_T)  # the chain starts where it is told
    assert torch.equal(x0[known], x_known[known])
    assert not torch.equal(x0[~known], x_known[~known])
    for t, x in kept.items():  # constant: clamped at every t; diffused: only at x_0
        assert torch.equal(x[known], x_known[known]) == (over_t == "constant" or t in (0, d.T)), t


@pytest.mark.parametrize("kind", ["gaussian", "binomial"])
def test_diffused_clamp_draws_known_coordinates_from_the_forward_marginal(kind):
    """At t >= 2 the kernel of a known coordinate is q(x_{t-1} | x0 = given), written out from the schedule:
    N(sqrt(ab) y, 1 - ab) or B(y ab + p (1 - ab)) with ab = prod_{s < t} (1 - beta_s); the others are untouched."""
    d = GaussianDiffusion(Schedule("sd2015", T=8)) if kind == "gaussian" else BinomialDiffusion(
        Schedule("binomial", T=8), p=0.3)
    N, D, t = 4, 5, 6
    g = torch.Generator().manual_seed(0)
    y = torch.randn(N, D, generator=g) if kind == "gaussian" else torch.randint(0, 2, (N, D), generator=g).float()
    known = torch.rand(N, D, generator=g) < 0.5
    p = (torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)) if kind == "gaussian" else (
        torch.rand(N, D, generator=g),)
    perturb = perturbation(d, [DeltaR(known, y)], "diffused")
    got = perturb(p, None, torch.full((N,), t))
    ab = torch.prod(1 - d.beta()[: t - 1]).item()
    expected = ((math.sqrt(ab) * y, torch.full_like(y, math.log(1 - ab))) if kind == "gaussian"
                else (y * ab + 0.3 * (1 - ab),))
    for got_i, p_i, e_i in zip(got, p, expected):
        torch.testing.assert_close(got_i[known], e_i[known].float(), rtol=1e-5, atol=1e-6)
        assert torch.equal(got_i[~known], p_i[~known])
    last = perturb(p, None, torch.ones(N, dtype=torch.long))
    assert torch.equal(last[0][known], y[known])


def perturbed_chain_moments(beta: torch.Tensor, y: float, var_r: float, over_t: str) -> tuple[float, float]:
    """The exact mean and variance of x0 for the perturbed chain of a zero-output network on 1-D data: every
    kernel is N(sqrt(1 - beta_t) x_t, beta_t) (the exact reversal of the stationary N(0, 1) process) times
    N(y, var_r / w_t), so x_{t-1} = k y + (1 - k) sqrt(1 - beta_t) x_t + N(0, beta_t var_r' / (beta_t + var_r')),
    k = beta_t / (beta_t + var_r'), from x_T ~ N(0, 1): a recursion on the two moments in float64."""
    T, m, v = len(beta), 0.0, 1.0
    for t in range(T, 0, -1):
        b = beta[t - 1].item()
        var_rt = var_r / (1.0 if over_t == "constant" else (T - t + 1) / T)
        k = b / (b + var_rt)
        m = k * y + (1 - k) * math.sqrt(1 - b) * m
        v = ((1 - k) * math.sqrt(1 - b)) ** 2 * v + b * var_rt / (b + var_rt)
    return m, v


@pytest.mark.parametrize("over_t", ["constant", "tempered"])
def test_denoising_sampler_matches_the_exact_moments_of_its_chain(over_t):
    """The whole perturbed sampler against the closed-form recursion above. It also records what Eq. 22-23 give:
    with r the same at every t the chain ends near p(x0) r(x0)^2 (mean y / (1 + var_r / 2) = 1.2 here), not
    p r (mean 1.0): each normalised kernel drops the factor r(x_t) / Z(x_t) of Eq. 21, whose effect adds up over
    the T steps; tempering r lands nearer p r in the mean (1.02) with too small a variance."""
    T, N, y, var_r = 200, 20000, 1.5, 0.5
    d = GaussianDiffusion(Schedule("sd2015", T=T))
    perturb = perturbation(d, [GaussianR(torch.full((N, 1), y), var_r)], over_t)
    x0, _ = d.sample(ConstantNet(2), (N, 1), torch.Generator().manual_seed(0), perturb=perturb)
    mean, var = perturbed_chain_moments(d.beta(), y, var_r, over_t)
    assert x0.double().mean().item() == pytest.approx(mean, abs=4 * math.sqrt(var / N))
    assert x0.double().var().item() == pytest.approx(var, abs=4 * var * math.sqrt(2 / N))
    if over_t == "constant":
        assert mean == pytest.approx(y / (1 + var_r / 2), abs=0.002)


@pytest.mark.slow
def test_heartbeat_completion_with_the_exact_kernel():
    """Records what the paper's clamp (a delta r on the first 5 bins at every t, Eq. 23) achieves with a perfect
    reverse kernel: about two in three completions have the phase the given bins fix, not all. The exact
    conditional kernel would multiply by r_{t-1} = p(given bins | x_{t-1}), which at large t is nearly flat in
    the given bins and couples them to the others; a delta in their place leaves the other 15 bins to commit to a
    phase of their own. The replacement from the forward marginal does worse. Unconditional samples are nearly
    all patterns. (SMC with the same kernel: tests/test_smc.py.)"""
    from dpm.data.heartbeat import heartbeat_patterns, pattern_index

    T, N = 2000, 300
    d = BinomialDiffusion(Schedule("binomial", T=T), p=0.2)
    patterns = heartbeat_patterns()
    net = ExactHeartbeatKernel(d, patterns)
    g = torch.Generator().manual_seed(0)
    phase = torch.randint(5, (N,), generator=g)
    x0 = patterns[phase]
    plain, _ = d.sample(net, (N, 20), g)
    assert (pattern_index(plain) >= 0).float().mean() > 0.95
    known = torch.zeros(N, 20, dtype=torch.bool)
    known[:, :5] = True
    rates = {}
    for over_t in ("constant", "diffused"):
        x_T = torch.where(known, x0, d.prior_sample((N, 20), g)) if over_t == "constant" else None
        x, _ = d.sample(net, (N, 20), g, perturb=perturbation(d, [DeltaR(known, x0)], over_t), x_T=x_T)
        rates[over_t] = (pattern_index(x) == phase).float().mean().item()
    assert 0.55 < rates["constant"] < 0.8 and rates["diffused"] < rates["constant"]
