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
