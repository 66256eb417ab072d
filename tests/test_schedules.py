"""Schedules against the numbers docs/paper.md §4.2 computed from the released code, and their invariants."""

import pytest
import torch

from dpm.core.schedules import SCHEDULES, Schedule, binomial_beta, sd2015_beta


def test_sd2015_matches_released_code_numbers():
    beta = sd2015_beta(1000)
    alpha_bar = torch.cumprod(1 - beta, 0)
    assert beta.dtype == torch.float64 and beta.shape == (1000,)
    assert beta[0].item() == pytest.approx(0.0020000, abs=1e-7)  # step1_beta + 1/T
    assert beta[1].item() == pytest.approx(0.0010020, abs=1e-7)
    assert beta[2].item() == pytest.approx(0.0010030, abs=1e-7)
    assert beta[-3:].tolist() == pytest.approx([0.2501, 0.3334, 0.49999], abs=1e-4)
    assert alpha_bar[-1].item() == pytest.approx(9.92e-4, rel=0.01)
    for k, expected in {1: 0.9970, 10: 0.9880, 100: 0.8980, 500: 0.4984, 900: 0.0995}.items():
        assert alpha_bar[k].item() == pytest.approx(expected, abs=2e-4)


def test_binomial_schedule_leaves_fraction_of_signal():
    T = 50
    beta = binomial_beta(T)
    signal = torch.cumprod(1 - beta, 0)
    t = torch.arange(1, T + 1, dtype=torch.float64)
    assert torch.allclose(signal, (T - t) / T, atol=1e-12)
    assert beta[-1].item() == 1.0


@pytest.mark.parametrize("kind", sorted(set(SCHEDULES) - {"binomial"}))
def test_every_schedule_is_a_valid_float64_buffer(kind):
    s = Schedule(kind, T=100)
    beta = s()
    assert beta.dtype == torch.float64 and beta.shape == (100,)
    assert bool(((beta > 0) & (beta < 1)).all())
    assert "base" in dict(s.named_buffers())


def test_learned_schedule_starts_at_base_keeps_beta1_and_gets_gradients():
    s = Schedule("sd2015", T=100, learned=True)
    base = Schedule("sd2015", T=100)()
    assert torch.allclose(s(), base, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        s.perturb.add_(torch.linspace(-1, 1, s.perturb.numel(), dtype=torch.float64))
    beta = s()
    assert beta[0] == base[0]  # beta_1 is fixed (paper 2.4.1)
    assert not torch.allclose(beta[1:], base[1:])
    assert bool(((beta > 0) & (beta < 1)).all())
    beta.sum().backward()
    assert s.perturb.grad is not None and torch.isfinite(s.perturb.grad).all()
    assert s.perturb.grad.abs().sum() > 0


def test_bad_schedule_arguments_fail_with_the_key():
    with pytest.raises(ValueError, match="T=1"):
        Schedule("sd2015", T=1)
    with pytest.raises(ValueError, match="valid choices"):
        Schedule("quadratic", T=10)
