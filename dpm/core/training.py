"""The training estimator of K (Eq. 14) from one draw per step: every random number a training step needs, t,
the dequantisation noise and the forward noise, comes from one tensor of standard normals z [N, n_draws].

    column 0                  t ~ U{2..T} per example, from u = Phi(z) (the normal CDF makes a normal uniform)
    columns 1..D (images)     dequantisation noise U(-w/2, w/2) per dimension, from u = Phi(z)
    the last D columns        the forward noise of q(x_t | x_0): z itself (Gaussian), or u = Phi(z) (binomial)

One draw instead of three is two operators fewer per step (on a GPU each is a kernel launch), and a compiled
per-example loss (K_one_draw under torch.compile) then holds everything after the draw. D = prod(*D) of one
example; w = 0 (no dequantisation) drops the D dequantisation columns.
"""

from __future__ import annotations

import torch

from dpm.core.bound import t_of_uniform
from dpm.core.diffusion import Diffusion, Net
from dpm.core.keyed import dequantize_with


def n_draws(x0: torch.Tensor, width: float) -> int:
    """Columns of z for a batch x0 [N, *D]: t, the dequantisation noise (width > 0), the forward noise."""
    D = x0[0].numel()
    return 1 + (D if width else 0) + D


def K_one_draw(diffusion: Diffusion, net: Net, x0: torch.Tensor, z: torch.Tensor, width: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(K_i, L_null_i), [N] nats each, of the dequantised x0 [N, *D], with one t per example: K_i =
    bound_const - (T - 1) KL_t (unbiased for Eq. 14's sum over t), all draws from z [N, n_draws(x0, width)]."""
    D = x0[0].numel()
    n_u = 1 + (D if width else 0)
    uniform = torch.special.ndtr(z if diffusion.noise == "uniform" else z[:, :n_u])
    t = t_of_uniform(uniform[:, 0], diffusion.T)
    if width:
        x0 = dequantize_with(x0, uniform[:, 1:n_u].view_as(x0), width)
    noise = (uniform if diffusion.noise == "uniform" else z)[:, n_u:].view_as(x0)
    with diffusion.one_pass():
        K = diffusion.bound_const(x0) - (diffusion.T - 1) * diffusion.kl_term(net, x0, t, noise=noise)
        return K, diffusion.L_null(x0)
