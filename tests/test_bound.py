"""The stratified draw of t behind the mc estimator: a partition of {2..T}, and unbiased sums."""

import math

import pytest
import torch

from dpm.core.bound import strata_edges, stratified_t
from dpm.core.stats import mean_and_stderr


@pytest.mark.parametrize("T,n_t", [(1000, 16), (40, 8), (40, 39), (2, 1), (2000, 1), (7, 3)])
def test_strata_partition_two_to_T(T, n_t):
    edges = strata_edges(T, n_t)
    assert len(edges) == n_t + 1 and edges[0] == 0 and edges[-1] == T - 1
    assert all(b > a for a, b in zip(edges, edges[1:]))
    t, w = stratified_t(20000, T, n_t, torch.Generator().manual_seed(0))
    assert t.shape == (n_t, 20000) and w.sum().item() == T - 1
    for k in range(n_t):  # every t of stratum k is drawn, and nothing outside it
        seen = set(t[k].tolist())
        assert seen <= set(range(2 + edges[k], 2 + edges[k + 1]))
        if edges[k + 1] - edges[k] <= 50:
            assert seen == set(range(2 + edges[k], 2 + edges[k + 1]))


def test_weighted_draws_estimate_the_sum_over_t_without_bias():
    T, n_t = 300, 6
    f = lambda t: 1.0 / t.double() ** 2 + 0.01  # noqa: E731 - large at small t, like the KL terms
    exact = f(torch.arange(2, T + 1)).sum().item()
    t, w = stratified_t(200000, T, n_t, torch.Generator().manual_seed(1))
    est = (f(t) * w[:, None]).sum(0)
    mean, se = mean_and_stderr(est, ddof=1)
    assert abs(mean - exact) < 4 * se
    assert se * math.sqrt(200000) < 0.2 * exact  # narrow strata at small t keep the spread small


def test_bad_n_t_is_named():
    with pytest.raises(ValueError, match="n_t=0"):
        stratified_t(5, 10, 0)
    with pytest.raises(ValueError, match="n_t=10"):
        stratified_t(5, 10, 10)


# ---- memory: one term of every example per network call -------------------------------------------------------

class RowCounter(torch.nn.Module):
    """Wraps a network and records how many rows each call gets."""

    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, []

    def forward(self, xt, t):
        self.rows.append(len(xt))
        return self.net(xt, t)


def unchunked_mc_kl_sum(d, net, x0, n_t, keys):
    """The mc estimator's sum as one network call over the batch repeated n_t times (each example's draws keyed by
    (seed, index, stream), the same in any batch): the reference the chunked estimator must equal."""
    t, w = stratified_t(len(x0), d.T, n_t, keys=keys)
    kl = d.kl_term(net, x0.repeat(n_t, *([1] * (x0.dim() - 1))), t.flatten(), keys=keys.repeat(n_t))
    return (kl.view(n_t, len(x0)) * w[:, None]).sum(0)


@pytest.mark.parametrize("kind", ["gaussian", "binomial"])
def test_mc_bound_puts_one_batch_through_the_network_at_a_time_and_equals_the_one_call_sum(kind):
    from dpm.core.bound import kl_sum
    from dpm.core.keyed import Keys
    from tests.helpers import diffusion_and_data

    d, mlp, x0 = diffusion_and_data(kind, T=200, n=50)
    net = RowCounter(mlp)
    keys = Keys(3, torch.arange(100, 150))
    done = []
    with torch.no_grad():
        chunked = kl_sum(d, net, x0, "mc", 64, keys=keys, on_terms=done.append)
        assert max(net.rows) == 50 and len(net.rows) == 64  # never more rows than the batch, whatever n_t
        reference = unchunked_mc_kl_sum(d, net, x0, 64, keys)
    assert torch.allclose(chunked, reference, rtol=1e-5, atol=1e-5 * reference.abs().mean().item())
    assert sum(done) == 50 * 64 and len(done) == 64  # progress told per stratum, not once at the end


def test_time_estimate_of_the_mc_bound_runs_one_batch_at_a_time():
    """The warm-up that times the bound must not need more memory than the bound: one batch per call."""
    from dpm.app.build import build
    from dpm.app.compose import compose
    from dpm.core.keyed import Keys
    from dpm.tasks.bound import estimate_seconds

    dm, module = build(compose(["T=100", "dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16"]))
    module.net = RowCounter(module.net)
    x0 = dm.splits["test"]
    seconds = estimate_seconds(module.eval(), x0, Keys(0, torch.arange(len(x0))), "mc", 32, 16)
    assert seconds > 0 and max(module.net.rows) == 16
