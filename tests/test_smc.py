"""SMC for a delta r on known coordinates (dpm.core.smc, SMCDiff) against independent computations: the model's exact
posterior over the unknown coordinates given one path of the known ones, by enumeration of the states of two bits
(binomial) and by a Kalman filter (a linear Gaussian network); the forward path against the closed-form marginals;
systematic resampling against its floor / ceil counts; and, slow, heartbeat completion with the exact kernel."""

import math

import pytest
import torch
from torch import nn

from dpm.core.binomial import BinomialDiffusion
from dpm.core.gaussian import GaussianDiffusion
from dpm.core.schedules import Schedule
from dpm.core.smc import effective_sample_size, forward_path, smc_sample, systematic_resample
from tests.helpers import ExactHeartbeatKernel, random_mlp


def setup(kind, T=8, D=3):
    if kind == "gaussian":
        return GaussianDiffusion(Schedule("sd2015", T=T)), random_mlp(D, 2, T, seed=1, scale=1.0)
    return BinomialDiffusion(Schedule("binomial", T=T), p=0.3), random_mlp(D, 1, T, seed=2, scale=1.5)


def given(kind, N, D, g):
    if kind == "gaussian":
        return torch.randn(N, D, generator=g)
    return torch.randint(0, 2, (N, D), generator=g).float()


# ---- the parts --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gaussian", "binomial"])
def test_forward_path_has_the_forward_marginals(kind):
    """y_0 is the given values exactly; y_t has q(x_t | x_0) = N(sqrt(ab_t) y0, 1 - ab_t) or B(y0 ab_t + p (1 - ab_t)),
    ab_t = prod_{s <= t} (1 - beta_s) from the schedule; successive steps are one chain (correlated)."""
    d, _ = setup(kind)
    K = 40000
    y0 = torch.full((K,), 1.0)
    path = forward_path(d, y0, torch.Generator().manual_seed(0))
    assert path.shape == (d.T + 1, K) and torch.equal(path[0], y0)
    ab = torch.cumprod(1 - d.beta(), 0)
    for t in (1, d.T // 2, d.T):
        a = ab[t - 1].item()
        if kind == "gaussian":
            assert path[t].mean().item() == pytest.approx(math.sqrt(a), abs=4 * math.sqrt((1 - a) / K))
            assert path[t].var().item() == pytest.approx(1 - a, abs=4 * (1 - a) * math.sqrt(2 / K) + 1e-6)
        else:
            m = a + 0.3 * (1 - a)
            assert path[t].mean().item() == pytest.approx(m, abs=4 * math.sqrt(m * (1 - m) / K) + 1e-6)
    if kind == "gaussian":  # a Markov chain, not independent draws from each marginal
        assert torch.corrcoef(path[2:4])[0, 1] > 0.5


def test_effective_sample_size():
    log_w = torch.log(torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0, 0, 0], [0.5, 0.5, 0, 0]], dtype=torch.float64))
    assert effective_sample_size(log_w + 3.0).tolist() == pytest.approx([4.0, 1.0, 2.0])


def test_systematic_resample_picks_each_particle_floor_or_ceil_of_p_w_times():
    g = torch.Generator().manual_seed(0)
    P = 10
    w = torch.softmax(torch.randn(500, P, generator=g, dtype=torch.float64) * 2, 1)
    w[:, 3] = 0.0
    w = w / w.sum(1, keepdim=True)
    index = systematic_resample(w.log(), g)
    counts = torch.zeros(500, P, dtype=torch.float64).scatter_add_(1, index, torch.ones(500, P, dtype=torch.float64))
    assert ((counts == torch.floor(P * w)) | (counts == torch.ceil(P * w))).all()
    assert (counts[:, 3] == 0).all()
    assert torch.equal(systematic_resample(w.log(), torch.Generator().manual_seed(1)),
                       systematic_resample(w.log(), torch.Generator().manual_seed(1)))


# ---- the sampler: known coordinates -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gaussian", "binomial"])
@pytest.mark.parametrize("P", [1, 6])
def test_known_coordinates_are_exact(kind, P):
    """x0 and every final particle hold the given values where known; the rest is sampled. P = 1 never
    resamples; the same seed gives the same result."""
    d, net = setup(kind, D=6)
    N, D = 30, 6
    g = torch.Generator().manual_seed(3)
    x_known = given(kind, N, D, g)
    known = torch.rand(N, D, generator=g) < 0.5
    result = smc_sample(d, net, known, x_known, P, torch.Generator().manual_seed(4))
    assert torch.equal(result.x0[known], x_known[known])
    known_p = known[:, None].expand(N, P, D)
    assert torch.equal(result.particles[known_p], x_known[:, None].expand(N, P, D)[known_p])
    assert not torch.equal(result.x0[~known], x_known[~known])
    assert result.particles.shape == (N, P, D) and result.log_w.shape == (N, P)
    assert torch.logsumexp(result.log_w, 1).abs().max() < 1e-9
    assert result.ess.shape == (d.T,) and ((result.ess >= 1 - 1e-9) & (result.ess <= P + 1e-9)).all()
    if P == 1:
        assert result.summary()["resamplings"] == 0 and torch.equal(result.ess, torch.ones(d.T, dtype=torch.float64))
    again = smc_sample(d, net, known, x_known, P, torch.Generator().manual_seed(4))
    assert torch.equal(again.x0, result.x0) and torch.equal(again.log_w, result.log_w)
    chunked = smc_sample(d, net, known, x_known, P, torch.Generator().manual_seed(4), chunk=7)
    # the network in chunks of 7 rows: the same weights up to float32 rounding (matmuls differ with the batch)
    torch.testing.assert_close(chunked.log_w, result.log_w, rtol=1e-4, atol=1e-4)


def test_bad_particles():
    d, net = setup("binomial")
    with pytest.raises(ValueError, match="particles=0 is invalid: must be a positive integer"):
        smc_sample(d, net, torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 3), 0)


# ---- the sampler: the distribution it draws ---------------------------------------------------------------
def binomial_posterior(d, net, path, known_bit, p):
    """p(x^u_0 | x^k_{0:T} = path) for D = 3 bits, bit `known_bit` known, by the forward algorithm over the 4 states
    u of the other two: alpha_T(u) = pi(u); alpha_{t-1}(u') = sum_u alpha_t(u) p(y_{t-1} | x_t) p(u' | x_t), x_t the
    state (y_t, u), kernels from diffusion.reverse_kernel. float64 [4], states in the order of `states`."""
    states = torch.tensor([[0.0, 0], [0, 1], [1, 0], [1, 1]])
    unknown = [i for i in range(3) if i != known_bit]
    alpha = torch.tensor([(p if a else 1 - p) * (p if b else 1 - p) for a, b in states.tolist()], dtype=torch.float64)
    for step in range(d.T, 0, -1):
        x = torch.zeros(4, 3)
        x[:, unknown], x[:, known_bit] = states, path[step]
        with torch.no_grad():
            (c,) = d.reverse_kernel(net, x, step)
        c = c.double()
        y = path[step - 1].item()
        emit = c[:, known_bit] if y == 1 else 1 - c[:, known_bit]  # [4]: p(y_{t-1} | x_t = state u)
        cu = c[:, None, unknown]  # [4 from, 1, 2]
        move = torch.where(states[None] == 1, cu, 1 - cu).prod(2)  # [4 from, 4 to]: p(u_{t-1} = to | x_t = from)
        alpha = (alpha * emit) @ move
    return alpha / alpha.sum(), states


def test_binomial_smc_draws_the_enumerated_posterior():
    """Two unknown bits given one path of the third: the distribution of SMC's draws (many examples sharing the
    path) matches the exact posterior of the model by enumeration, and differs from the single chain's (P = 1),
    so the check has power."""
    torch.manual_seed(0)
    d, net = setup("binomial", T=6, D=3)
    known_bit, N = 0, 4000
    path = torch.tensor([[1.0, 1, 0, 1, 0, 0, 1]]).T  # y_0..y_T of the known bit, [T + 1, 1]
    exact, states = binomial_posterior(d, net, path[:, 0], known_bit, 0.3)
    known = torch.zeros(N, 3, dtype=torch.bool)
    known[:, known_bit] = True
    x_known = torch.zeros(N, 3)
    x_known[:, known_bit] = path[0, 0]

    def frequencies(P, resample_below=0.5):
        x0 = smc_sample(d, net, known, x_known, P, torch.Generator().manual_seed(P), resample_below,
                        path=path.repeat(1, N)).x0
        match = (x0[:, None, 1:] == states[None]).all(2)  # [N, 4]
        return match.double().mean(0)

    tolerance = 4 * torch.sqrt(exact * (1 - exact) / N) + 0.005  # Monte Carlo error, and SMC's O(1/P) bias
    for resample_below in (0.5, 1.0):  # the weights here rarely fall to P / 2; 1.0 resamples at every step
        smc = frequencies(64, resample_below)
        assert ((smc - exact).abs() < tolerance).all(), (resample_below, smc, exact)
    single = frequencies(1)
    assert ((single - exact).abs() > tolerance).any(), (single, exact)


class LinearNet(nn.Module):
    """z_mu = x A^T, z_var = 0: with GaussianDiffusion's code form the kernel is N(M_t x_t, beta_t I),
    M_t = sqrt(1 - beta_t) I + sqrt(beta_t) A, a linear Gaussian chain. [N, 2, D]."""

    def __init__(self, A):
        super().__init__()
        self.A = A

    def forward(self, x, t):
        return torch.stack([x @ self.A.T, torch.zeros_like(x)], 1)


def kalman_posterior(beta, A, y):
    """Mean and variance of x^u_0 given x^k_{0:T} = y for D = 2 (coordinate 0 known, 1 unknown) in the chain of
    LinearNet, with x_T ~ N(0, I) and the fixed last step N(sqrt(1 - beta_1) x_1, beta_1): a scalar Kalman filter
    backwards in t, in float64. Each step observes y_{t-1} = M00 y_t + M01 u_t + noise, then moves
    u_{t-1} = M11 u_t + M10 y_t + noise (noise variance beta_t)."""
    m, v = 0.0, 1.0
    for t in range(len(beta), 0, -1):
        b = beta[t - 1].item()
        M = math.sqrt(1 - b) * torch.eye(2, dtype=torch.float64) + (math.sqrt(b) * A.double() if t >= 2 else 0)
        S = M[0, 1] ** 2 * v + b
        gain = v * M[0, 1] / S
        m = m + gain * (y[t - 1] - M[0, 0] * y[t] - M[0, 1] * m)
        v = v - gain * M[0, 1] * v
        m, v = M[1, 1] * m + M[1, 0] * y[t], M[1, 1] ** 2 * v + b
    return float(m), float(v)


def test_gaussian_smc_draws_the_kalman_posterior():
    """One unknown coordinate given one path of the other, in a linear Gaussian chain: the mean and variance of
    SMC's draws match the Kalman filter's; the single chain's mean does not."""
    T, N = 8, 4000
    d = GaussianDiffusion(Schedule("sd2015", T=T))
    A = torch.tensor([[0.0, 1.5], [-1.0, 0.0]])
    net = LinearNet(A)
    y = forward_path(d, torch.tensor([1.2]), torch.Generator().manual_seed(5))  # [T + 1, 1]
    mean, var = kalman_posterior(d.beta(), A, y[:, 0].double())
    known = torch.tensor([[True, False]]).expand(N, 2)
    x_known = torch.tensor([[1.2, 0.0]]).expand(N, 2)

    def draws(P):
        return smc_sample(d, net, known, x_known, P, torch.Generator().manual_seed(P), path=y.repeat(1, N)).x0[:, 1]

    u = draws(64).double()
    assert u.mean().item() == pytest.approx(mean, abs=4 * math.sqrt(var / N) + 0.01 * math.sqrt(var))
    assert u.var().item() == pytest.approx(var, rel=4 * math.sqrt(2 / N) + 0.03)
    single = draws(1).double()
    assert abs(single.mean().item() - mean) > 10 * math.sqrt(var / N)


@pytest.mark.slow
def test_heartbeat_completion_by_smc_with_the_exact_kernel():
    """The clamp of Eq. 23 completes about two in three heartbeats consistently with their first 5 bins even with
    the exact reverse kernel (tests/test_posterior.py); SMC over 32 particles with the same kernel: at least 95 %."""
    from dpm.data.heartbeat import heartbeat_patterns, pattern_index

    T, N = 2000, 300
    d = BinomialDiffusion(Schedule("binomial", T=T), p=0.2)
    patterns = heartbeat_patterns()
    g = torch.Generator().manual_seed(0)
    phase = torch.randint(5, (N,), generator=g)
    known = torch.zeros(N, 20, dtype=torch.bool)
    known[:, :5] = True
    result = smc_sample(d, ExactHeartbeatKernel(d, patterns), known, patterns[phase], 32, g)
    assert torch.equal(result.x0[:, :5], patterns[phase][:, :5])
    assert (pattern_index(result.x0) == phase).float().mean() >= 0.95
