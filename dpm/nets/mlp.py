"""An MLP reverse network for vector data (the Swiss roll, the binary heartbeat), docs/paper.md §2.4."""

from __future__ import annotations

import torch
from torch import nn

from dpm.nets.activations import make_activation
from dpm.core.temporal import TemporalReadout

READOUTS = ("bump", "per_t")


class MLP(nn.Module):
    """Lower layers shared across t, then a readout of n_outputs x D numbers per example at each example's t.

    readout="bump": a linear layer to n_outputs x D x J coefficients, read out through the J temporal bumps
    (Eq. 62-63). readout="per_t": a separate linear readout for every t, as the paper's toy networks.
    time_input=True also feeds g(t) (the J bump weights) to the first layer, so the shared features can
    depend on t. skip=True also reads x itself out (the readout sees [h, x]): a linear map of x_t whose
    coefficients vary with t through the bumps, the exact form of Gaussian data's reverse mean, which ReLU
    features alone only approximate. The readout starts at zero, so training starts from the forward kernel's own
    form.

    x [N, D], t [N] -> [N, n_outputs, D].
    """

    def __init__(self, data_shape: tuple[int, ...], n_outputs: int, T: int, hidden: int = 128, n_layers: int = 3,
                 activation: str = "relu", n_temporal_basis: int = 10, time_input: bool = True,
                 readout: str = "bump", skip: bool = False) -> None:
        super().__init__()
        if len(data_shape) != 1:
            raise ValueError(f"net MLP takes vector data [N, D]; got data shape {tuple(data_shape)}")
        if readout not in READOUTS:
            raise ValueError(f"net.readout={readout!r} is unknown; valid choices: {list(READOUTS)}")
        self.D, self.n_outputs, self.readout_kind, self.time_input = data_shape[0], n_outputs, readout, time_input
        self.temporal = TemporalReadout(T, n_temporal_basis)
        layers: list[nn.Module] = []
        width = self.D + (n_temporal_basis if time_input else 0)
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), make_activation(activation)]
            width = hidden
        self.lower = nn.Sequential(*layers)
        self.skip = bool(skip)
        width += self.D if self.skip else 0
        n_read = n_outputs * self.D
        if readout == "bump":
            self.readout = nn.Linear(width, n_read * n_temporal_basis)
            nn.init.zeros_(self.readout.weight)
            nn.init.zeros_(self.readout.bias)
        else:
            self.readout_weight = nn.Parameter(torch.zeros(T, width, n_read))
            self.readout_bias = nn.Parameter(torch.zeros(T, n_read))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g = self.temporal.weights(t).to(x.dtype)  # [N, J]
        h = self.lower(torch.cat([x, g], dim=1) if self.time_input else x)  # [N, hidden]
        if self.skip:
            h = torch.cat([h, x], dim=1)  # [N, hidden + D]
        N = x.shape[0]
        if self.readout_kind == "bump":
            y = self.readout(h).view(N, self.n_outputs, self.D, self.temporal.J).transpose(2, 3)  # [N, M, J, D]
            return self.temporal(y, t)
        out = torch.einsum("nh,nho->no", h, self.readout_weight[t - 1]) + self.readout_bias[t - 1]
        return out.view(N, self.n_outputs, self.D)
