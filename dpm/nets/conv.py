"""The paper's image reverse network (App. D.2.1, Fig. D.1; the released code's regression.py, docs/paper.md §5.1-5.3).

    x_t [N, C, H, W] --+-- multi-scale conv pathway: n_layers_conv x MultiScaleConvolution --> [N, F_conv, H, W]
                       +-- dense pathway over the whole image (C*H*W -> ... -> F_dense*H*W)  --> [N, F_dense, H, W]
    concat per pixel (each pathway divided by the sqrt of its width) --> per-pixel dense layers (1x1 convolutions)
    --> C x n_outputs x J coefficients per pixel --> temporal bump readout at t (Eq. 62-63) --> [N, n_outputs, C, H, W]

Either pathway can be switched off: n_layers_conv=0 gives the dense-only network of the paper's MNIST,
n_hidden_dense_lower=0 (or n_layers_dense_lower=0) a convolution-only one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dpm.nets.activations import make_activation
from dpm.core.temporal import TemporalReadout
from dpm.ranges import count


def check_divisible(H: int, W: int, n_scales: int) -> None:
    """Mean-pooling to n_scales scales in powers of 2 needs H and W divisible by 2^(n_scales - 1)."""
    factor = 2 ** (n_scales - 1)
    if H % factor or W % factor:
        raise ValueError(f"net.n_scales={n_scales} needs image height and width divisible by 2^(n_scales-1) = "
                         f"{factor}; the images are {H}x{W}. Use a smaller net.n_scales or a patch size that "
                         f"is a multiple of {factor}.")


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upsampling of [N, F, h, w] to [N, F, h*factor, w*factor] (each value repeated in a block)."""
    return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3) if factor > 1 else x


class MultiScaleConvolution(nn.Module):
    """One multi-scale convolution layer (paper App. D.2.1; regression.py MultiScaleConvolution).

    For scale s = 0..n_scales-1: mean-pool the input over 2^s x 2^s blocks, convolve (kernel_size, 'same'
    padding, one convolution per scale), upsample back to full resolution; average over the scales.
    per_scale_activation=True (the released code) applies the nonlinearity to each scale before the sum;
    False (the paper) applies one nonlinearity to the sum. The linear part approximates one large multiscale
    kernel (Barron et al. 2013). Init as released: weights N(0, std = sqrt(1/out_channels)/kernel_size^2),
    zero biases.

    x [N, in_channels, H, W] -> [N, out_channels, H, W]; H and W divisible by 2^(n_scales-1).
    """

    def __init__(self, in_channels: int, out_channels: int, n_scales: int = 1, kernel_size: int = 3,
                 activation: str = "leaky_relu", per_scale_activation: bool = True) -> None:
        super().__init__()
        n_scales = count("net.n_scales", n_scales, 1)
        if kernel_size % 2 != 1:
            raise ValueError(f"net.kernel_size={kernel_size} is invalid: must be odd for 'same' padding")
        self.n_scales, self.per_scale_activation = int(n_scales), per_scale_activation
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
                                   for _ in range(self.n_scales))
        for conv in self.convs:
            nn.init.normal_(conv.weight, std=math.sqrt(1.0 / out_channels) / kernel_size**2)
            nn.init.zeros_(conv.bias)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x.shape[2], x.shape[3], self.n_scales)
        # coarsest first, as released: the accumulator is upsampled x2 before each finer scale is added
        acc = None
        for s in reversed(range(self.n_scales)):
            y = self.convs[s](F.avg_pool2d(x, 2**s) if s > 0 else x)  # [N, out, H/2^s, W/2^s]
            if self.per_scale_activation:
                y = self.act(y)
            acc = y if acc is None else upsample(acc, 2) + y
        out = acc / self.n_scales
        return out if self.per_scale_activation else self.act(out)


def dense_stack(widths: list[int], activation: str, last_activation: bool, conv1x1: bool = False) -> nn.Sequential:
    """Linear (or 1x1-convolution) layers between consecutive widths, orthogonal weights and zero biases as
    released, the nonlinearity after every layer but the last unless last_activation."""
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
        layer = nn.Conv2d(w_in, w_out, 1) if conv1x1 else nn.Linear(w_in, w_out)
        nn.init.orthogonal_(layer.weight)  # a 1x1 kernel [out, in, 1, 1] is treated as its [out, in] matrix
        nn.init.zeros_(layer.bias)
        layers.append(layer)
        if last_activation or i < len(widths) - 2:
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)


class ImageReverseNet(nn.Module):
    """The paper's image network: conv and dense pathways in parallel, merged per pixel, per-pixel dense
    layers, temporal readout. x_t [N, C, H, W], t [N] (1..T) -> [N, n_outputs, C, H, W].

    Keys follow the released DiffusionModel (docs/paper.md §5.2). Differences from the released code, on purpose:
    - the dense pathway has n_layers_dense_lower layers (the released code took its depth from
      n_layers_conv, a bug, docs/paper.md §10.9; set both equal to reproduce it);
    - zero_readout=True starts the last per-pixel layer at zero, so the reverse kernel starts as the forward
      kernel's own form (z = 0) and the bound starts near K - L_null = 0; the released code used an
      orthogonal init there too (zero_readout=False);
    - time_input=True (off in the released code) also feeds the J bump weights g(t) to both pathways, as
      constant extra channels and extra dense inputs, so the features, not only the readout, can depend on t.
    activation names the nonlinearity everywhere (the released code: leaky_relu, slope 0.05);
    conv_activation / dense_activation override it for the conv pathway / the dense layers (the paper:
    softplus / tanh).
    """

    def __init__(self, data_shape: tuple[int, ...], n_outputs: int, T: int, n_temporal_basis: int = 10,
                 n_hidden_conv: int = 20, n_layers_conv: int = 4, n_scales: int = 1, kernel_size: int = 3,
                 n_hidden_dense_lower: int = 500, n_hidden_dense_lower_output: int = 2,
                 n_layers_dense_lower: int = 4, n_hidden_dense_upper: int = 20, n_layers_dense_upper: int = 2,
                 activation: str = "leaky_relu", conv_activation: str | None = None,
                 dense_activation: str | None = None, per_scale_activation: bool = True,
                 zero_readout: bool = True, time_input: bool = False) -> None:
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"net ImageReverseNet takes images [N, C, H, W]; got data shape {tuple(data_shape)}")
        for key, value in (("n_layers_conv", n_layers_conv), ("n_hidden_conv", n_hidden_conv),
                           ("n_hidden_dense_lower", n_hidden_dense_lower),
                           ("n_layers_dense_lower", n_layers_dense_lower),
                           ("n_hidden_dense_lower_output", n_hidden_dense_lower_output)):
            count(f"net.{key}", value, 0)
        count("net.n_layers_dense_upper", n_layers_dense_upper, 1, why=" (at least the readout layer)")
        self.C, self.H, self.W = (int(d) for d in data_shape)
        self.n_outputs, self.J, self.time_input = n_outputs, n_temporal_basis, time_input
        conv_act, dense_act = conv_activation or activation, dense_activation or activation
        t_channels = n_temporal_basis if time_input else 0
        self.use_conv = n_layers_conv > 0 and n_hidden_conv > 0
        self.use_dense = n_hidden_dense_lower > 0 and n_layers_dense_lower > 0 and n_hidden_dense_lower_output > 0
        if not (self.use_conv or self.use_dense):
            raise ValueError("net: both pathways are off; set net.n_layers_conv > 0 (convolutional) and/or "
                             "net.n_hidden_dense_lower > 0 with net.n_layers_dense_lower > 0 (dense)")
        if self.use_conv:
            check_divisible(self.H, self.W, n_scales)
            chans = [self.C + t_channels] + [n_hidden_conv] * n_layers_conv
            self.conv = nn.Sequential(*(MultiScaleConvolution(c_in, c_out, n_scales, kernel_size, conv_act,
                                                              per_scale_activation)
                                        for c_in, c_out in zip(chans[:-1], chans[1:])))
        n_pix = self.H * self.W
        if self.use_dense:
            widths = ([self.C * n_pix + t_channels] + [n_hidden_dense_lower] * (n_layers_dense_lower - 1)
                      + [n_hidden_dense_lower_output * n_pix])
            self.dense = dense_stack(widths, dense_act, last_activation=True)  # released: output layer too
        self.F_conv = n_hidden_conv if self.use_conv else 0
        self.F_dense = n_hidden_dense_lower_output if self.use_dense else 0
        widths = ([self.F_conv + self.F_dense] + [n_hidden_dense_upper] * (n_layers_dense_upper - 1)
                  + [self.C * n_outputs * n_temporal_basis])
        self.upper = dense_stack(widths, dense_act, last_activation=False, conv1x1=True)
        if zero_readout:
            nn.init.zeros_(self.upper[-1].weight)
        self.temporal = TemporalReadout(T, n_temporal_basis)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        if (C, H, W) != (self.C, self.H, self.W):
            raise ValueError(f"net was built for images {self.C}x{self.H}x{self.W}; got {C}x{H}x{W}")
        g = self.temporal.weights(t).to(x.dtype)  # [N, J]
        features = []
        if self.use_conv:
            h = torch.cat([x, g[:, :, None, None].expand(N, self.J, H, W)], 1) if self.time_input else x
            features.append(self.conv(h) / math.sqrt(self.F_conv))  # [N, F_conv, H, W]
        if self.use_dense:
            h = torch.cat([x.flatten(1), g], 1) if self.time_input else x.flatten(1)
            features.append(self.dense(h).view(N, self.F_dense, H, W) / math.sqrt(self.F_dense))
        y = self.upper(torch.cat(features, 1))  # [N, C * n_outputs * J, H, W], channel c*M*J + m*J + j as released
        y = y.view(N, C, self.n_outputs, self.J, H, W).permute(0, 2, 3, 1, 4, 5)  # [N, M, J, C, H, W]
        return self.temporal(y, t)  # [N, M, C, H, W]
