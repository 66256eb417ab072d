"""The training estimator from one draw per step (dpm.core.training) and what makes a step lean: the bound's
constant terms in closed form, the tables gathered once per pass, t from a uniform."""

import pytest
import torch

from dpm.core.binomial import BinomialDiffusion
from dpm.core.bound import K_per_example, stratified_t, t_of_uniform
from dpm.core.diffusion import Diffusion
from dpm.core.gaussian import GaussianDiffusion
from dpm.core.schedules import Schedule
from dpm.core.training import ImportanceT, K_one_draw, n_draws, t_and_weight
from tests.helpers import random_mlp


@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_bound_const_closed_form_equals_its_five_terms(learned, dtype):
    d = GaussianDiffusion(Schedule("sd2015", T=50, learned=learned))
    x0 = (torch.randn(7, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 1.3).to(dtype)
    closed, terms = d.bound_const(x0), Diffusion.bound_const(d, x0)  # the base class: the terms one by one
    assert closed.dtype == dtype and torch.allclose(closed.double(), terms.double(), rtol=1e-6, atol=1e-5)
    if learned:
        params = list(d.schedule.parameters())
        g_closed = torch.autograd.grad(d.bound_const(x0.double()).sum(), params)
        g_terms = torch.autograd.grad(Diffusion.bound_const(d, x0.double()).sum(), params)
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(g_closed, g_terms))


@pytest.mark.parametrize("learned", [False, True])
def test_binomial_bound_const_closed_form_equals_its_five_terms(learned):
    d = BinomialDiffusion(Schedule("binomial", T=40, learned=learned), p=0.2)
    x0 = torch.bernoulli(torch.full((9, 20), 0.3), generator=torch.Generator().manual_seed(1))
    for x in (x0, x0.double()):
        assert torch.allclose(d.bound_const(x).double(), Diffusion.bound_const(d, x).double(), atol=1e-5)


def test_tables_are_gathered_once_per_time_in_a_pass():
    d = GaussianDiffusion(Schedule("sd2015", T=30))
    t = torch.tensor([2, 5, 30, 17])
    x = torch.zeros(4, 3)
    outside = {name: d.coef(name, t, x) for name in ("sqrt_ab", "post_c0", "logit_beta")}
    with d.one_pass(), torch.profiler.profile() as prof:
        inside = {name: d.coef(name, t, x) for name in outside}
    gathers = [e for e in prof.events() if e.name == "aten::index"]
    assert len(gathers) == 1
    for name in outside:
        assert torch.equal(inside[name], outside[name]) and inside[name].shape == (4, 1)
    assert d.coef("sqrt_ab", 30, x).dim() == 0 and d.coef("sqrt_ab", 30, x) == outside["sqrt_ab"][2, 0]


def test_t_of_uniform_is_uniform_on_2_to_T_and_the_one_stratum_case_of_stratified_t():
    T = 7
    u = (torch.arange(6000) + 0.5) / 6000
    t = t_of_uniform(u, T)
    assert t.dtype == torch.long and torch.equal(torch.bincount(t, minlength=T + 1)[2:], torch.full((T - 1,), 1000))
    assert t_of_uniform(torch.ones(3), T).max() == T  # u = 1 (Phi rounding up) stays inside
    u = torch.rand(1, 50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t_of_uniform(u, T), 2 + torch.floor(u.double() * (T - 1)).long())
    # stratified_t with one stratum draws its uniforms from the generator and maps them the same way
    want, w = stratified_t(50, T, 1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(want, t_of_uniform(u, T)) and w.tolist() == [T - 1]


def one_draw_and_exact(kind: str, t_probs: torch.Tensor | None = None, T: int = 6, N: int = 40000):
    """(K_one_draw's K and L_null, the exact K, the diffusion, x0) for N copies of one example, t drawn uniformly or
    from t_probs [T - 1]."""
    if kind == "gaussian":
        d = GaussianDiffusion(Schedule("sd2015", T=T))
        x0 = torch.tensor([[0.7, -1.2]]).expand(N, 2).contiguous()
    else:
        d = BinomialDiffusion(Schedule("binomial", T=T), p=0.3)
        x0 = torch.tensor([[1.0, 0.0]]).expand(N, 2).contiguous()
    net = random_mlp(2, d.n_outputs, T)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        K, L_null = K_one_draw(d, net, x0, torch.randn(N, n_draws(x0, 0.0), generator=g), t_probs=t_probs)
        exact = K_per_example(d, net, x0, "exact", generator=g)
    return K, L_null, exact, d, x0


@pytest.mark.parametrize("kind", ["gaussian", "binomial"])
def test_K_one_draw_is_unbiased_for_K(kind):
    """Averaged over its one draw, K_one_draw's K is the exact K (every t, its x_t drawn) of the same example."""
    K, L_null, exact, d, x0 = one_draw_and_exact(kind)
    N = len(x0)
    assert torch.allclose(L_null, d.L_null(x0))
    se = (K.var() / N + exact.var() / N).sqrt()
    assert abs(K.mean() - exact.mean()) < 4 * se
    assert K.std() > 0  # t and the noise did vary


def test_K_one_draw_dequantises_within_one_bin_from_its_own_columns():
    d = GaussianDiffusion(Schedule("sd2015", T=10))
    net = random_mlp(4, 2, 10)
    x0 = torch.zeros(500, 4)
    width = 0.5
    z = torch.randn(500, n_draws(x0, width), generator=torch.Generator().manual_seed(0))
    assert z.shape[1] == 1 + 4 + 4
    with torch.no_grad():
        _, L_null = K_one_draw(d, net, x0, z, width)
    # L_null = sum_d log N(x_d; 0, 1) of the dequantised x: sum_d x_d^2 from it
    sq = -2 * L_null - 4 * torch.log(torch.tensor(2 * torch.pi))
    u = torch.special.ndtr(z[:, 1:5])
    assert torch.allclose(sq, ((u - 0.5) * width).pow(2).sum(1), atol=1e-5)
    assert sq.max() <= 4 * (width / 2) ** 2 + 1e-6


@pytest.mark.slow  # torch.compile on the CPU: a minute or more
def test_compiled_training_loss_equals_the_eager_one_and_keeps_plain_keys():
    from dpm.app.build import build
    from dpm.app.compose import compose

    cfg = compose(["dataset=swiss_roll", "T=20", "dataset.n_train=64", "compile=true"])
    _, module = build(cfg)
    assert module.compile_loss and not any("_orig_mod" in k for k in module.state_dict())
    x0 = module.dequantize(torch.randn(16, 2))
    z = torch.randn(16, n_draws(x0, module.dequantization_width), generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(module._train_loss)
    results = []
    for fn in (module._train_loss, compiled):
        module.zero_grad(set_to_none=True)
        with module.diffusion.one_pass():
            loss, K, *_ = fn(x0, z)
        loss.backward()
        results.append((loss.detach(), K.detach(), [p.grad.clone() for p in module.net.parameters()]))
    (l1, K1, g1), (l2, K2, g2) = results
    assert torch.allclose(l1, l2, rtol=1e-5, atol=1e-6) and torch.allclose(K1, K2, rtol=1e-5, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g1, g2))


def test_importance_sampled_t_is_unbiased_by_enumeration():
    """E_t~p[w_t KL_t] = sum_t p_t KL_t / p_t = sum_{t=2..T} KL_t for any p: the draw of t_and_weight is exactly p
    (its inverse cumulative sum on an even grid of uniforms) and w_t is 1 / p_t."""
    T = 9
    p = torch.tensor([0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.1, 0.05])
    n = 200000
    t, w = t_and_weight((torch.arange(n) + 0.5) / n, T, p)
    assert t.min() >= 2 and t.max() <= T
    assert torch.allclose(torch.bincount(t, minlength=T + 1)[2:] / n, p, atol=1e-5)
    kl = torch.rand(T - 1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(w, 1 / p[t - 2]) and (w * kl[t - 2]).mean() == pytest.approx(kl.sum().item(), rel=1e-4)
    t_uniform, w_uniform = t_and_weight((torch.arange(n) + 0.5) / n, T)
    assert w_uniform == T - 1 and torch.equal(t_uniform, t_of_uniform((torch.arange(n) + 0.5) / n, T))


@pytest.mark.parametrize("kind", ["gaussian", "binomial"])
def test_K_one_draw_with_importance_sampled_t_is_unbiased_for_K(kind):
    """The same one-draw check as the uniform estimator's, with t ~ a far-from-uniform p."""
    K, _, exact, _, x0 = one_draw_and_exact(kind, t_probs=torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625]))
    N = len(x0)
    se = (K.var() / N + exact.var() / N).sqrt()
    assert abs(K.mean() - exact.mean()) < 4 * se


def test_the_importance_sampler_follows_the_root_mean_square_of_KL_t():
    sampler = ImportanceT(T=5, rate=1.0, uniform=0.2, warmup=2)
    flat = torch.full((4,), 0.25)
    kl = torch.tensor([4.0, 2.0, 1.0, 1.0])
    t = torch.tensor([2, 3, 4, 5])
    sampler.update(t, kl)
    assert torch.allclose(sampler.probs(), flat)  # uniform until every t was seen `warmup` times
    sampler.update(t, -kl)  # the square: the sign of a KL estimate does not matter
    want = 0.8 * kl / kl.sum() + 0.2 * flat
    assert torch.allclose(sampler.probs(), want) and sampler.probs().sum().item() == pytest.approx(1.0)
    state = sampler.state()
    other = ImportanceT(T=5, rate=1.0, uniform=0.2, warmup=2)
    other.load_state(state)
    assert torch.equal(other.probs(), sampler.probs())
    assert "second_moment" not in sampler.state_dict()  # kept out of the weights (checkpoints carry it apart)
