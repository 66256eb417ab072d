"""Binomial diffusion: posterior, KL, the bound K and sampling, each against an independent computation
(enumeration of the two-state chain and of whole trajectories)."""

import itertools
import math

import pytest
import torch
from torch import nn

from dpm.core.binomial import BinomialDiffusion, bernoulli_entropy, bernoulli_kl
from dpm.core.bound import K_per_example
from dpm.core.stats import mean_and_stderr
from dpm.app.build import build
from dpm.core.schedules import Schedule
from tests.helpers import ConstantNet


def diffusion(T=20, p=0.5, kind="binomial", **schedule_kw):
    return BinomialDiffusion(Schedule(kind, T=T, **schedule_kw), p=p)


def transition_matrices(d):
    """Q[t-1][a, b] = q(x_t = b | x_{t-1} = a) for t = 1..T, written out from the kernel's definition, float64."""
    Q = []
    for beta in d.beta().tolist():
        on = [d.p * beta, 1 - beta + d.p * beta]  # P(x_t = 1 | x_{t-1} = 0), P(x_t = 1 | x_{t-1} = 1)
        Q.append(torch.tensor([[1 - on[0], on[0]], [1 - on[1], on[1]]], dtype=torch.float64))
    return Q


class TableNet(nn.Module):
    """z = table[t - 1, x_t] for every bit: an arbitrary reverse kernel that depends on t and x_t. [N, 1, D]."""

    def __init__(self, T, seed=0, scale=2.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = scale * torch.randn(T, 2, generator=g, dtype=torch.float64)

    def forward(self, xt, t):
        return self.table[t - 1][torch.arange(len(t))[:, None], xt.long()].to(xt.dtype)[:, None]


def expected_K(d, net, x0):
    """E over x_t of K per example [N] (nats), the KL of each t averaged over x_t in {0, 1} per bit exactly,
    for a network that treats bits independently (TableNet, ConstantNet)."""
    total = d.bound_const(x0)
    for step in range(2, d.T + 1):
        t = torch.full((x0.shape[0],), step, dtype=torch.long)
        m = d.marginal(x0, t)[0]
        for xt_value, weight in ((1.0, m), (0.0, 1 - m)):
            xt = torch.full_like(x0, xt_value)
            kl = d.kl(d.q_posterior(x0, xt, t), d.p_params(net(xt, t), xt, t))
            total = total - (weight * kl).flatten(1).sum(1)
    return total


def enumerated_K(d, net, x0_bit):
    """E_q[log p(x_0:T) / q(x_1:T | x0)] for one bit x0 (D = 1), summed over all 2^T trajectories (Eq. 12),
    with the fixed last step p(x0 | x1) = T_pi(x0 | x1; beta_1) (App. B.2) and p(x_T) = pi. Nats."""
    Q, T, total = transition_matrices(d), d.T, 0.0
    for path in itertools.product((0, 1), repeat=T):
        xs = (x0_bit, *path)  # x_0 .. x_T
        log_q = sum(math.log(Q[t - 1][xs[t - 1], xs[t]]) for t in range(1, T + 1))
        log_p = math.log(d.p if xs[T] else 1 - d.p)
        for t in range(T, 0, -1):
            xt = torch.tensor([[float(xs[t])]], dtype=torch.float64)
            tt = torch.tensor([t])
            params = d.p_params(net(xt, tt), xt, tt) if t >= 2 else d.forward_kernel(xt, tt)
            f = params[0].item()
            log_p += math.log(f if xs[t - 1] else 1 - f)
        total += math.exp(log_q) * (log_p - log_q)
    return total


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_marginal_and_posterior_against_enumeration_of_the_chain(p):
    """q(x_t|x0) as a product of 2x2 transition matrices; q(x_{t-1}|x_t,x0) by Bayes on those products."""
    d = diffusion(T=12, p=p)
    Q = transition_matrices(d)
    M = [torch.eye(2, dtype=torch.float64)]  # M[t][x0, b] = q(x_t = b | x0)
    for Qt in Q:
        M.append(M[-1] @ Qt)
    for t in range(1, d.T + 1):
        for x0 in (0, 1):
            got = d.marginal(torch.tensor([[float(x0)]], dtype=torch.float64), torch.tensor([t]))[0].item()
            assert got == pytest.approx(M[t][x0, 1].item(), abs=1e-12)
    for t, x0, xt in itertools.product(range(2, d.T + 1), (0, 1), (0, 1)):
        brute = (M[t - 1][x0, 1] * Q[t - 1][1, xt] / M[t][x0, xt]).item()
        got = d.q_posterior(torch.tensor([[float(x0)]], dtype=torch.float64),
                            torch.tensor([[float(xt)]], dtype=torch.float64), torch.tensor([t]))[0].item()
        assert got == pytest.approx(brute, abs=1e-12), (t, x0, xt)


def test_kl_and_entropy_against_enumeration():
    g = torch.Generator().manual_seed(0)
    q = torch.cat([torch.rand(200, generator=g, dtype=torch.float64), torch.tensor([0.0, 1.0, 0.0, 1.0])])
    p = torch.cat([torch.rand(200, generator=g, dtype=torch.float64), torch.tensor([0.3, 0.7, 0.5, 0.01])])
    for qi, pi, kl, h in zip(q.tolist(), p.tolist(), bernoulli_kl(q, p).tolist(), bernoulli_entropy(q).tolist()):
        states = [(qi, pi), (1 - qi, 1 - pi)]  # u = 1, u = 0
        assert kl == pytest.approx(sum(a * math.log(a / b) for a, b in states if a > 0), abs=1e-10)
        assert h == pytest.approx(-sum(a * math.log(a) for a, _ in states if a > 0), abs=1e-10)
    assert bernoulli_kl(q, q)[:200].abs().max() < 1e-12


def test_schedule_makes_x_T_independent_of_x0():
    d = diffusion(T=2000, p=0.2)
    assert d.alpha_bar()[-1].item() == 0.0
    T = torch.tensor([d.T, d.T])
    assert d.marginal(torch.tensor([[0.0], [1.0]], dtype=torch.float64), T)[0].flatten().tolist() == [0.2, 0.2]
    product = torch.linalg.multi_dot(transition_matrices(diffusion(T=30, p=0.2)))
    assert torch.allclose(product, torch.tensor([[0.8, 0.2], [0.8, 0.2]], dtype=torch.float64), atol=1e-12)
    # and not before the last step: x_{T-1} still remembers a fraction 1/T of x0
    ab = d.alpha_bar()
    assert ab[-2].item() == pytest.approx(1 / d.T)


@pytest.mark.parametrize("p, kind", [(0.5, "binomial"), (0.2, "binomial"), (0.3, "linear")])
def test_bound_equals_enumeration_over_all_trajectories(p, kind):
    """K of Eq. 14 with its constant terms (bound_const) equals the trajectory average of Eq. 12 exactly,
    for an arbitrary reverse kernel, a prior mismatched to the data and a schedule whose x_T keeps signal."""
    kw = {"beta_1": 0.05, "beta_T": 0.6} if kind == "linear" else {}
    d = diffusion(T=7, p=p, kind=kind, **kw)
    net = TableNet(d.T)
    for x0 in (0.0, 1.0):
        want = enumerated_K(d, net, int(x0))
        got = expected_K(d, net, torch.tensor([[x0]], dtype=torch.float64)).item()
        assert got == pytest.approx(want, abs=1e-6)  # bound_const works in float32


def test_exact_estimator_is_unbiased():
    """The exact estimator (one draw of x_t per term) averages to the enumerated expectation."""
    torch.manual_seed(0)
    d = diffusion(T=7, p=0.3)
    net = TableNet(d.T)
    x0 = torch.tensor([[0.0], [1.0]], dtype=torch.float64).repeat(4000, 1)
    K = K_per_example(d, net, x0, "exact")
    for bit in (0, 1):
        mean, se = mean_and_stderr(K[bit::2], ddof=1)
        assert abs(mean - enumerated_K(d, net, bit)) < 4 * se


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_forward_form_reverse_kernel_gives_L_null_on_independent_bernoulli_data(p):
    """B(x_{t-1}; x_t(1 - beta_t) + p beta_t) is the exact reversal of the chain started at B(p) (a two-state
    chain satisfies detailed balance), so the network output z = 0 gives K = L_null: exactly on average over
    x0 ~ B(p), and within 3 standard errors from a sample of data."""
    d = diffusion(T=100, p=p).double()
    bits = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    K_bits = expected_K(d, ConstantNet(1), bits)
    weights = torch.tensor([1 - p, p], dtype=torch.float64)
    assert (weights * K_bits).sum().item() == pytest.approx((weights * d.L_null(bits)).sum().item(), abs=1e-6)
    g = torch.Generator().manual_seed(1)
    x0 = torch.bernoulli(torch.full((1000, 20), p, dtype=torch.float64), generator=g)
    gain, se = mean_and_stderr(K_per_example(d, ConstantNet(1), x0, "exact", generator=g) - d.L_null(x0), ddof=1)
    assert abs(gain) < 3 * se, (gain, se)
    # and the test can fail: a perturbed reverse kernel costs bits
    bad, _ = mean_and_stderr(K_per_example(d, ConstantNet(1, 0.5), x0, "exact", generator=g) - d.L_null(x0), ddof=1)
    assert bad < -10 * se


def test_last_step_term_vanishes_only_for_data_matched_to_the_prior():
    """The fixed last step's term E[log pi(x0) - log pi(x1) | x0] (in bound_const) is (1 - q1) log(p / (1 - p))
    for a 1 and -q1 log(p / (1 - p)) for a 0, q1 = q(x1 = 1 | x0): it sums to zero over a sequence exactly when
    the sequence's mean activity is p, and not otherwise."""
    d = diffusion(T=100, p=0.2).double()
    one = torch.ones(2, dtype=torch.long)

    def last_step_term(x0):
        q1 = d.marginal(x0, one)
        return (d.log_prior(x0) + d.prior_cross_entropy(q1)).sum(1)

    matched = torch.tensor([[1.0] + [0.0] * 4, [0.0, 0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    assert last_step_term(matched).abs().max().item() < 1e-12
    assert last_step_term(torch.ones(2, 5, dtype=torch.float64)).abs().min().item() > 1e-3


def test_reverse_kernel_is_a_perturbation_of_the_forward_kernel():
    d = diffusion(T=50, p=0.2)
    xt = torch.tensor([[0.0, 1.0]]).repeat(49, 1)
    t = torch.arange(2, 51)
    fwd = d.forward_kernel(xt, t)[0]
    assert torch.allclose(d.p_params(torch.zeros(49, 1, 2), xt, t)[0], fwd, atol=1e-6)
    z = torch.full((49, 1, 2), 0.7)
    assert torch.allclose(torch.logit(d.p_params(z, xt, t)[0]), torch.logit(fwd) + 0.7, atol=1e-3)


def test_sampler_with_forward_form_kernel_returns_the_prior():
    d = diffusion(T=30, p=0.2)
    g = torch.Generator().manual_seed(0)
    x, kept = d.sample(ConstantNet(1), (20000, 1), g, keep=(30, 15, 0))
    assert set(kept) == {30, 15, 0} and torch.equal(kept[0], x)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert abs(x.mean().item() - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 20000)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5, "half", True, None])
def test_p_outside_the_unit_interval_fails_clearly(p):
    with pytest.raises(ValueError, match=r"diffusion\.p"):
        diffusion(p=p)


def test_non_binary_data_fails_clearly(compose_cfg):
    with pytest.raises(ValueError, match="binary data"):
        diffusion().check_data(torch.tensor([[0.0, 1.0, 0.5]]))
    diffusion().check_data(torch.tensor([[0.0, 1.0, 1.0]]))
    cfg = compose_cfg(["dataset=swiss_roll", "diffusion=binomial", "schedule=binomial", "dataset.n_train=10",
                       "dataset.n_val=10", "dataset.n_test=10", "out_dir=/nonexistent"])
    with pytest.raises(ValueError, match="binary data"):
        build(cfg)


def test_log_prob_is_the_bernoulli_log_mass():
    """x log c + (1 - x) log(1 - c) per bit against torch.distributions.Bernoulli, and exact where c is 0 or 1."""
    from torch.distributions import Bernoulli

    g = torch.Generator().manual_seed(0)
    c = torch.rand(6, 4, dtype=torch.float64, generator=g).clamp(1e-3, 1 - 1e-3)
    x = torch.randint(0, 2, (6, 4), generator=g).double()
    torch.testing.assert_close(diffusion().log_prob((c,), x), Bernoulli(probs=c).log_prob(x), rtol=1e-12, atol=1e-12)
    edge = diffusion().log_prob((torch.tensor([0.0, 1.0, 0.0, 1.0]),), torch.tensor([0.0, 1.0, 1.0, 0.0]))
    assert edge.tolist() == [0.0, 0.0, -math.inf, -math.inf]
