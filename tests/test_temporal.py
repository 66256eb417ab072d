"""The temporal bump basis of Eq. 62-63 as the released code builds it."""

import torch

from dpm.core.temporal import TemporalReadout, bump_basis


def test_basis_is_a_partition_of_unity_with_bumps_at_the_ends():
    g = bump_basis(1000, 10)
    assert g.shape == (1000, 10)
    assert torch.allclose(g.sum(1), torch.ones(1000), atol=1e-6)
    assert bool((g >= 0).all())
    assert g[0].argmax() == 0 and g[-1].argmax() == 9  # centres on t = 1 and t = T
    # bump std is half the centre spacing: at a centre the neighbour's weight is exp(-2) of its own
    T, J = 91, 10  # centre j sits exactly on t = 1 + 10 j
    g = bump_basis(T, J)
    ratio = g[10, 0] / g[10, 1]
    assert abs(ratio.item() - torch.exp(torch.tensor(-2.0)).item()) < 1e-4


def test_readout_picks_each_examples_own_time():
    T, J = 50, 7
    readout = TemporalReadout(T, J)
    y = torch.randn(3, 2, J, 4)
    t = torch.tensor([1, 25, 50])
    z = readout(y, t)
    g = bump_basis(T, J)
    for i in range(3):
        expected = torch.einsum("mjd,j->md", y[i], g[t[i] - 1])
        assert torch.allclose(z[i], expected, atol=1e-6)
