"""Gaussian diffusion: posterior, KL, the bound K and sampling, each against an independent computation."""

import math

import pytest
import torch
from torch.distributions import Normal

from dpm.core.bound import K_per_example
from dpm.core.stats import mean_and_stderr
from dpm.core.gaussian import GaussianDiffusion, normal_kl
from dpm.core.schedules import Schedule
from tests.helpers import ConstantNet, random_mlp


def diffusion(kind="sd2015", T=20, reverse_form="code", **schedule_kw):
    return GaussianDiffusion(Schedule(kind, T=T, **schedule_kw), reverse_form=reverse_form).double()


def test_posterior_is_the_normalised_product_of_gaussians():
    """q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0), integrated numerically on a grid."""
    d = GaussianDiffusion(Schedule("geometric", T=10, beta_1=1e-3, beta_T=0.4))
    beta = d.beta()
    ab = torch.cumprod(1 - beta, 0)
    grid = torch.linspace(-6, 6, 200001, dtype=torch.float64)
    for t, x0, xt in [(2, 0.7, -0.3), (5, -1.2, 0.4), (10, 2.0, 1.5)]:
        prior = Normal(ab[t - 2].sqrt() * x0, (1 - ab[t - 2]).sqrt()).log_prob(grid)
        lik = Normal((1 - beta[t - 1]).sqrt() * grid, beta[t - 1].sqrt()).log_prob(torch.tensor(xt, dtype=torch.float64))
        w = torch.softmax(prior + lik, 0)
        mean = (w * grid).sum()
        var = (w * (grid - mean) ** 2).sum()
        mu_post, logvar_post = d.q_posterior(torch.tensor([[x0]]), torch.tensor([[xt]]), torch.tensor([t]))
        assert mu_post.item() == pytest.approx(mean.item(), abs=1e-5)
        assert logvar_post.exp().item() == pytest.approx(var.item(), rel=1e-4)


def test_kl_against_monte_carlo():
    torch.manual_seed(0)
    mq, lq, mp, lp = torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(-0.5), torch.tensor(0.4)
    q, p = Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp())
    x = q.sample((400000,))
    mc = q.log_prob(x) - p.log_prob(x)
    se = mc.std() / math.sqrt(len(x))
    assert abs(normal_kl(mq, lq, mp, lp) - mc.mean()) < 4 * se
    assert normal_kl(mq, lq, mq, lq).abs() < 1e-7


def test_isotropic_model_gives_K_equal_L_null_on_standard_normal_data():
    """Mean coefficients 0 and reverse variance beta_t reverse the stationary N(0, I) process exactly (docs/paper.md §2.3)."""
    torch.manual_seed(1)
    d = diffusion("sd2015", T=60)
    x0 = torch.randn(2000, 2, dtype=torch.float64)
    K = K_per_example(d, ConstantNet(2), x0, "exact")
    gain, se = mean_and_stderr(K - d.L_null(x0), ddof=1)
    assert abs(gain) < 3 * se, (gain, se)
    # and it is not trivially zero: a perturbed mean costs bits
    K_bad = K_per_example(d, ConstantNet(2, 0.5), x0, "exact")
    assert (K_bad - d.L_null(x0)).mean() < -10 * se


def log_trajectory_ratio(d, net, x0, n_traj):
    """Brute force: log p(x_{0..T}) - log q(x_{1..T}|x0) along sampled forward trajectories, computed step by
    step with torch.distributions (including p(x_T) = N(0, I) and the fixed p(x0|x1) = N(sqrt(1-b1) x1, b1))."""
    beta = d.beta()
    x0 = x0.repeat(n_traj, 1)
    xs = [x0]
    logq = 0.0
    for t in range(1, d.T + 1):
        step = Normal((1 - beta[t - 1]).sqrt() * xs[-1], beta[t - 1].sqrt())
        xs.append(step.sample())
        logq = logq + step.log_prob(xs[-1]).sum(1)
    logp = Normal(0.0, 1.0).log_prob(xs[d.T]).sum(1)
    for t in range(d.T, 1, -1):
        tt = torch.full((len(x0),), t)
        mu, logvar = d.p_params(net(xs[t], tt), xs[t], tt)
        logp = logp + Normal(mu, (0.5 * logvar).exp()).log_prob(xs[t - 1]).sum(1)
    logp = logp + Normal((1 - beta[0]).sqrt() * xs[1], beta[0].sqrt()).log_prob(xs[0]).sum(1)
    return logp - logq


@pytest.mark.parametrize("reverse_form", ["code", "paper"])
def test_K_equals_the_brute_force_trajectory_average_for_any_data(reverse_form):
    """Eq. 12 averaged by brute force equals our K (KL terms + exact constants) on data far from N(0, I)."""
    torch.manual_seed(2)
    T = 6
    d = diffusion("geometric", T=T, beta_1=0.01, beta_T=0.6, reverse_form=reverse_form)
    net = random_mlp(2, 2, T).double()
    x0 = torch.tensor([[1.5, -0.7]], dtype=torch.float64)  # one point, not standard normal
    with torch.no_grad():
        brute = log_trajectory_ratio(d, net, x0, 60000)
        K = K_per_example(d, net, x0.repeat(10000, 1), "exact")
    se = math.sqrt(brute.var().item() / len(brute) + K.var().item() / len(K))
    assert abs(brute.mean().item() - K.mean().item()) < 4 * se, (brute.mean(), K.mean(), se)


def test_exact_and_mc_estimators_agree():
    torch.manual_seed(3)
    T = 30
    d = diffusion("sd2015", T=T)
    net = random_mlp(2, 2, T).double()
    x0 = torch.randn(2000, 2, dtype=torch.float64) * 0.8 + 0.2
    with torch.no_grad():
        exact = K_per_example(d, net, x0, "exact")
        mc = K_per_example(d, net, x0, "mc", n_t=5)
    (m_e, se_e), (m_m, se_m) = mean_and_stderr(exact, ddof=1), mean_and_stderr(mc, ddof=1)
    assert abs(m_e - m_m) < 3 * math.hypot(se_e, se_m)
    # the same examples: the paired difference is a sharper test of the mc weighting
    diff, se_d = mean_and_stderr(mc - exact, ddof=1)
    assert abs(diff) < 4 * se_d
    assert se_m > se_e  # drawing t adds variance


def test_training_estimator_is_unbiased_for_the_kl_sum():
    """One t per example, weighted by T - 1 (not T, as the released code did)."""
    torch.manual_seed(4)
    T = 10
    d = diffusion("sd2015", T=T)
    net = random_mlp(2, 2, T).double()
    x0 = torch.full((1, 2), 0.5, dtype=torch.float64)
    with torch.no_grad():
        exact = K_per_example(d, net, x0.repeat(5000, 1), "exact")
        one_t = K_per_example(d, net, x0.repeat(60000, 1), "mc", n_t=1)
    se = math.hypot(exact.std().item() / math.sqrt(len(exact)), one_t.std().item() / math.sqrt(len(one_t)))
    assert abs(exact.mean().item() - one_t.mean().item()) < 4 * se


@pytest.mark.parametrize("reverse_form", ["code", "paper"])
def test_sampling_is_the_ancestral_chain_of_the_reverse_kernels(reverse_form):
    """The chain replayed by hand from the same generator: x_T ~ N(0, I), then x_{t-1} = mu + sigma eps with the
    network's mu, sigma^2 written out from Eq. 64-65 (paper) or the released code for t >= 2, and the fixed
    N(sqrt(1 - beta_1) x_1, beta_1) at t = 1; the kept states are the chain's own."""
    T = 15
    d = GaussianDiffusion(Schedule("geometric", T=T), reverse_form=reverse_form)
    net = random_mlp(2, 2, T)
    x0, kept = d.sample(net, (64, 2), torch.Generator().manual_seed(0), keep=(T, 7, 0))
    assert set(kept) == {T, 7, 0} and torch.equal(kept[0], x0)
    g = torch.Generator().manual_seed(0)
    beta = d.beta().float()
    x = torch.randn((64, 2), generator=g)
    states = {T: x}
    with torch.no_grad():
        for t in range(T, 0, -1):
            b = beta[t - 1]
            if t == 1:
                mean, var = (1 - b).sqrt() * x, b
            else:
                z_mu, z_var = net(x, torch.full((64,), t)).unbind(1)
                if reverse_form == "code":
                    mean, var = (1 - b).sqrt() * x + b.sqrt() * z_mu, torch.sigmoid(z_var / T**0.5 + torch.logit(b))
                else:
                    var = torch.sigmoid(z_var + torch.logit(b))
                    mean = (x - z_mu) * (1 - var) + z_mu
            x = mean + var.sqrt() * torch.randn((64, 2), generator=g)
            states[t - 1] = x
    for t in (T, 7, 0):
        torch.testing.assert_close(kept[t], states[t], rtol=1e-5, atol=1e-5)


def test_sampler_applies_the_final_fixed_step():
    """With T = 2 and a zero net, x0 ~ N(sqrt(1-b1) x1, b1): the variance of x0 given x1 must be beta_1."""
    d = GaussianDiffusion(Schedule("geometric", T=2, beta_1=0.3, beta_T=0.3))
    g = torch.Generator().manual_seed(0)
    x0, kept = d.sample(ConstantNet(2), (200000, 1), g, keep=(1, 0))
    resid = kept[0] - (1 - 0.3) ** 0.5 * kept[1]
    assert resid.var().item() == pytest.approx(0.3, rel=0.02)


def test_bad_reverse_form_names_the_choices():
    with pytest.raises(ValueError, match="reverse_form.*valid choices"):
        GaussianDiffusion(Schedule("sd2015", T=10), reverse_form="other")


def test_log_prob_is_the_normal_log_density():
    """log N(x; mean, e^logvar) per dimension against torch.distributions.Normal, shapes broadcast as params do."""
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(5, 3, dtype=torch.float64, generator=g)
    logvar = torch.randn(5, 3, dtype=torch.float64, generator=g)
    x = torch.randn(5, 3, dtype=torch.float64, generator=g) * 3
    expected = Normal(mean, torch.exp(0.5 * logvar)).log_prob(x)
    torch.testing.assert_close(diffusion().log_prob((mean, logvar), x), expected, rtol=1e-12, atol=1e-12)
    one_var = Normal(mean, torch.exp(0.5 * logvar[:1])).log_prob(x)  # a variance shared by the batch
    torch.testing.assert_close(diffusion().log_prob((mean, logvar[:1]), x), one_var, rtol=1e-12, atol=1e-12)
