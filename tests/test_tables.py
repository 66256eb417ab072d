"""The schedule's derived tables (Diffusion.tables): equal to the float64 formulas, built once, immune to dtype casts,
and following a learned schedule's parameters through optimizer steps and checkpoint loads."""

import pytest
import torch

from dpm.core.binomial import BinomialDiffusion
from dpm.core.bound import K_per_example
from dpm.core.gaussian import GaussianDiffusion
from dpm.core.schedules import Schedule
from tests.helpers import ConstantNet, random_mlp


def gaussian_formulas(beta):
    """Every Gaussian coefficient at t = 1..T from beta, float64, written out independently."""
    T = len(beta)
    ab = torch.tensor([torch.prod(1 - beta[:t]).item() for t in range(1, T + 1)], dtype=torch.float64)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    var_post = beta * (1 - ab_prev) / (1 - ab)
    var_post[0] = beta[0]
    return {"sqrt_ab": ab.sqrt(), "log1m_ab": (1 - ab).log(), "sqrt_1m_ab": (1 - ab).sqrt(),
            "post_c0": ab_prev.sqrt() * beta / (1 - ab), "post_ct": (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab),
            "post_logvar": var_post.log(), "sqrt_beta": beta.sqrt(), "sqrt_1m_beta": (1 - beta).sqrt(),
            "log_beta": beta.log(), "logit_beta": (beta / (1 - beta)).log()}


def check_tables(d, formulas):
    tables = d.tables()
    assert set(tables[torch.float64]) == set(formulas)
    for name, expected in formulas.items():
        t64, t32 = tables[torch.float64][name], tables[torch.float32][name]
        assert t64.dtype == torch.float64 and t32.dtype == torch.float32 and t64.shape == (d.T + 1,)
        assert torch.isnan(t64[0]) and torch.isnan(t32[0])  # index 0 (t = 0) is never read
        assert torch.allclose(t64[1:], expected, rtol=1e-12, atol=1e-12), name
        assert torch.equal(t32[1:], t64[1:].float()), name


@pytest.mark.parametrize("kind", ["sd2015", "geometric", "cosine"])
def test_gaussian_tables_equal_the_float64_formulas(kind):
    d = GaussianDiffusion(Schedule(kind, T=50))
    check_tables(d, gaussian_formulas(d.beta()))


def test_binomial_tables_equal_the_float64_formulas():
    d = BinomialDiffusion(Schedule("binomial", T=40), p=0.3)
    beta, p = d.beta(), 0.3
    ab = torch.cumprod(1 - beta, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    on1, on0 = 1 - beta * (1 - p), p * beta
    check_tables(d, {"alpha_bar": ab, "p_1m_ab": p * (1 - ab), "alpha_bar_prev": ab_prev,
                     "p_1m_ab_prev": p * (1 - ab_prev), "1m_beta": 1 - beta, "p_beta": p * beta,
                     "on1": on1, "off1": 1 - on1, "on0": on0, "off0": 1 - on0})


def count_builds(d, monkeypatch):
    calls = []
    derive = d.derive
    monkeypatch.setattr(d, "derive", lambda beta: calls.append(1) or derive(beta))
    return calls


def test_a_fixed_schedule_builds_its_tables_once(monkeypatch):
    d = GaussianDiffusion(Schedule("sd2015", T=20))
    builds = count_builds(d, monkeypatch)
    net, x0 = random_mlp(2, 2, 20), torch.randn(16, 2)
    with torch.no_grad():
        K_per_example(d, net, x0, "exact")
        K_per_example(d, net, x0, "mc", 4)
    K_per_example(d, net, x0, "mc", 1).mean().backward()
    assert len(builds) == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtype_casts_leave_the_schedule_float64_and_the_bound_unchanged(dtype):
    d = GaussianDiffusion(Schedule("sd2015", T=1000))
    x0 = torch.randn(32, 3)
    K = K_per_example(d, ConstantNet(2), x0, "mc", 8, torch.Generator().manual_seed(0))
    d.to(dtype)
    assert d.schedule.base.dtype == torch.float64
    assert d.tables()[torch.float32]["logit_beta"].dtype == torch.float32
    after = K_per_example(d, ConstantNet(2), x0, "mc", 8, torch.Generator().manual_seed(0))
    assert torch.isfinite(after).all() and torch.equal(after, K)


def test_bf16_data_gets_float32_coefficients():
    d = BinomialDiffusion(Schedule("binomial", T=100), p=0.2)
    x0 = torch.bernoulli(torch.full((8, 5), 0.3)).bfloat16()
    t = torch.full((8,), 50)
    assert d.q_posterior(x0, x0, t)[0].dtype == torch.float32  # bf16 x float32 coefficient -> float32


def test_autocast_keeps_the_bound_in_float32():
    d = GaussianDiffusion(Schedule("sd2015", T=100))
    net, x0 = random_mlp(2, 2, 100), torch.randn(256, 2)
    with torch.no_grad():
        ref = K_per_example(d, net, x0, "mc", 4, torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            K = K_per_example(d, net, x0, "mc", 4, torch.Generator().manual_seed(0))
            const = d.bound_const(x0)
    assert K.dtype == torch.float32 and torch.equal(const, d.bound_const(x0))
    assert torch.allclose(K, ref, rtol=0.02, atol=0.02)  # only the network ran in bf16


def learned():
    torch.manual_seed(0)
    d = GaussianDiffusion(Schedule("sd2015", T=30, learned=True))
    return d, random_mlp(2, 2, 30), torch.randn(64, 2) * 0.5 + 0.3


def fresh_tables(d):
    with torch.no_grad():
        return d.derive(d.schedule())


def test_learned_schedule_tables_follow_optimizer_steps(monkeypatch):
    d, net, x0 = learned()
    opt = torch.optim.Adam(d.parameters(), lr=0.1)
    with torch.no_grad():
        before = {k: v.clone() for k, v in d.tables()[torch.float64].items()}
    builds = count_builds(d, monkeypatch)
    loss = -K_per_example(d, net, x0, "mc", 1).mean()
    assert len(builds) == 1  # once per K_per_example, with its graph
    loss.backward()
    assert d.schedule.perturb.grad.abs().sum() > 0  # K reaches the schedule through the tables
    opt.step()
    with torch.no_grad():
        after = d.tables()[torch.float64]
        for name, expected in fresh_tables(d).items():
            assert torch.allclose(after[name][1:], expected, rtol=1e-12, atol=1e-12), name
        assert not torch.allclose(after["sqrt_ab"][1:], before["sqrt_ab"][1:])
        assert d.tables() is d.tables()  # without grad: cached until the next change


def test_learned_schedule_accumulates_gradients_and_survives_inference_mode():
    d, net, x0 = learned()
    with torch.inference_mode():  # Lightning validates in inference mode: tables built there must train later
        K_per_example(d, net, x0, "mc", 2)
    for _ in range(2):  # two backward passes without an optimizer step in between
        (-K_per_example(d, net, x0, "mc", 1).mean()).backward()
    assert torch.isfinite(d.schedule.perturb.grad).all()
    fixed = GaussianDiffusion(Schedule("sd2015", T=30))
    net.zero_grad()
    with torch.inference_mode():
        K_per_example(fixed, net, x0, "mc", 2)
    (-K_per_example(fixed, net, x0, "mc", 1).mean()).backward()  # no "inference tensors" error
    assert net.readout.weight.grad.abs().sum() > 0


def test_tables_follow_a_loaded_state_dict():
    d, _, _ = learned()
    other = GaussianDiffusion(Schedule("sd2015", T=30, learned=True))
    with torch.no_grad():
        other.schedule.perturb.add_(0.3)
        d.tables()
        d.load_state_dict(other.state_dict())
        assert torch.allclose(d.tables()[torch.float64]["sqrt_ab"][1:], fresh_tables(other)["sqrt_ab"])
    assert "tables" not in str(list(d.state_dict()))  # derived, never saved
