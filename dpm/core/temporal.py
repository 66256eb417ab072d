"""The temporal bump basis g_j(t) of paper Eq. 62-63, as the released code builds it (docs/paper.md §2.3)."""

from __future__ import annotations

import torch
from torch import nn


def bump_basis(T: int, J: int = 10) -> torch.Tensor:
    """g_j(t) of Eq. 63 for t = 1..T (row t-1): normalised Gaussian bumps, rows sum to 1. float32 [T, J].

    Follows generate_temporal_basis: time axis linspace(-1, 1, T), centres linspace(-1, 1, J) (end bumps sit
    on t = 1 and t = T), bump std half the centre spacing (the paper's Eq. 63 says the full spacing).
    """
    if J < 1:
        raise ValueError(f"n_temporal_basis={J} is invalid: needs at least 1 bump")
    x = torch.linspace(-1, 1, T, dtype=torch.float64)[:, None]
    if J == 1:
        return torch.ones(T, 1)
    centres = torch.linspace(-1, 1, J, dtype=torch.float64)[None, :]
    std = (centres[0, 1] - centres[0, 0]) / 2
    g = torch.exp(-((x - centres) ** 2) / (2 * std**2))
    return (g / g.sum(dim=1, keepdim=True)).float()


class TemporalReadout(nn.Module):
    """z(t) = sum_j y_j g_j(t) (Eq. 62): reads per-example coefficients out at each example's own t."""

    def __init__(self, T: int, J: int = 10) -> None:
        super().__init__()
        self.T, self.J = T, J
        self.register_buffer("basis", bump_basis(T, J), persistent=False)

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """g(t) for paper times t [N] (long, 1..T): [N, J]."""
        return self.basis[t - 1]

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """y [N, M, J, *D], t [N] -> z [N, M, *D]."""
        g = self.weights(t).to(y.dtype)  # [N, J]
        g = g.reshape(g.shape[0], 1, self.J, *([1] * (y.dim() - 3)))
        return (y * g).sum(dim=2)
