"""The training estimator of K (Eq. 14) from one draw per step: every random number a training step needs, t,
the dequantisation noise and the forward noise, comes from one tensor of standard normals z [N, n_draws].

    column 0                  t ~ U{2..T} per example, from u = Phi(z) (the normal CDF makes a normal uniform)
    columns 1..D (images)     dequantisation noise U(-w/2, w/2) per dimension, from u = Phi(z)
    the last D columns        the forward noise of q(x_t | x_0): z itself (Gaussian), or u = Phi(z) (binomial)

One draw instead of three is two operators fewer per step (on a GPU each is a kernel launch), and a compiled
per-example loss (K_one_draw under torch.compile) then holds everything after the draw. D = prod(*D) of one
example; w = 0 (no dequantisation) drops the D dequantisation columns.

t is drawn uniformly (weight T - 1 on KL_t), or by importance (ImportanceT: t ~ p_t with weight 1 / p_t, p_t
proportional to the root mean square of KL_t, as Nichol & Dhariwal (2021) sample t for L_vlb); either way
E_t[weight KL_t] = sum_{t=2..T} KL_t, so the estimate of K stays unbiased (t_and_weight).
"""

from __future__ import annotations

import torch
from torch import nn

from dpm.core.bound import t_of_uniform
from dpm.core.diffusion import Diffusion, Net
from dpm.core.keyed import dequantize_with


def n_draws(x0: torch.Tensor, width: float) -> int:
    """Columns of z for a batch x0 [N, *D]: t, the dequantisation noise (width > 0), the forward noise."""
    D = x0[0].numel()
    return 1 + (D if width else 0) + D


def t_and_weight(u: torch.Tensor, T: int, t_probs: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | float]:
    """t [N] (long, 2..T) from uniforms u [N], and the weight w such that E_t[w KL_t] = sum_{t=2..T} KL_t:
    t ~ U{2..T} and w = T - 1 (t_probs None), or t ~ t_probs (p over t = 2..T, [T - 1], by the inverse of its
    cumulative sum) and w = 1 / p_t [N]."""
    if t_probs is None:
        return t_of_uniform(u, T), float(T - 1)
    cdf = torch.cumsum(t_probs, 0)
    k = torch.searchsorted(cdf, (u * cdf[-1]).to(cdf.dtype).unsqueeze(-1), right=True).squeeze(-1).clamp(max=T - 2)
    return k + 2, 1.0 / t_probs[k]


def one_draw_terms(diffusion: Diffusion, net: Net, x0: torch.Tensor, z: torch.Tensor, width: float = 0.0,
                   t_probs: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """(bound_const, KL_t, t, w, L_null), [N] each (nats; w a float for uniform t), of the dequantised x0 [N, *D]
    with one t per example (t_and_weight), every draw from z [N, n_draws(x0, width)]."""
    D = x0[0].numel()
    n_u = 1 + (D if width else 0)
    uniform = torch.special.ndtr(z if diffusion.noise == "uniform" else z[:, :n_u])
    t, w = t_and_weight(uniform[:, 0], diffusion.T, t_probs)
    if width:
        x0 = dequantize_with(x0, uniform[:, 1:n_u].view_as(x0), width)
    noise = (uniform if diffusion.noise == "uniform" else z)[:, n_u:].view_as(x0)
    with diffusion.one_pass():
        kl = diffusion.kl_term(net, x0, t, noise=noise)
        return diffusion.bound_const(x0), kl, t, w, diffusion.L_null(x0)


def K_one_draw(diffusion: Diffusion, net: Net, x0: torch.Tensor, z: torch.Tensor, width: float = 0.0,
               t_probs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(K_i, L_null_i), [N] nats each, of the dequantised x0 [N, *D], with one t per example: K_i =
    bound_const - w KL_t (unbiased for Eq. 14's sum over t; w = T - 1 for uniform t, 1 / p_t for t ~ t_probs),
    all draws from z [N, n_draws(x0, width)]."""
    const, kl, _, w, L_null = one_draw_terms(diffusion, net, x0, z, width, t_probs)
    return const - w * kl, L_null


class ImportanceT(nn.Module):
    """The distribution of t in {2..T} that training draws from with importance sampling: p_t proportional to
    sqrt(E[KL_t^2]), the proposal that minimises the variance of w KL_t (Nichol & Dhariwal 2021, whose resampler
    keeps the last 10 losses per t), mixed with the uniform distribution (weight `uniform`) so that every t keeps
    being drawn. E[KL_t^2] is an exponential moving average per t, moved by `rate` towards the batch's mean of
    KL_t^2 at each step in which t occurs; until every t has been seen `warmup` times p is uniform.

    Its two buffers travel in checkpoints (state() / load_state()), so a resumed run draws what an uninterrupted one
    would; update takes a `reduce` (a sum over processes) so that every DDP process holds the same p."""

    def __init__(self, T: int, rate: float = 0.1, uniform: float = 0.1, warmup: int = 10) -> None:
        super().__init__()
        self.T, self.rate, self.uniform, self.warmup = int(T), float(rate), float(uniform), float(warmup)
        # not in the module's state_dict (so no checkpoint needs them to load, and EMA leaves them alone): the
        # LightningModule keeps them in its checkpoints itself
        self.register_buffer("second_moment", torch.zeros(self.T - 1, dtype=torch.float64), persistent=False)
        self.register_buffer("seen", torch.zeros(self.T - 1, dtype=torch.float64), persistent=False)

    def _apply(self, fn, recurse=True):
        """Moves follow the module; dtype casts do not (the estimates stay float64, as the schedule's tables)."""
        def keep_dtype(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            return out if out.dtype == t.dtype else t.to(out.device)
        return super()._apply(keep_dtype, recurse)

    def probs(self) -> torch.Tensor:
        """p over t = 2..T, float32 [T - 1], summing to 1."""
        n = self.T - 1
        flat = torch.full_like(self.second_moment, 1.0 / n)
        rms = self.second_moment.sqrt()
        learned = rms / rms.sum().clamp(min=1e-300)
        ready = (self.seen >= self.warmup).all() & (rms.sum() > 0)
        return torch.where(ready, (1 - self.uniform) * learned + self.uniform * flat, flat).float()

    @torch.no_grad()
    def update(self, t: torch.Tensor, kl: torch.Tensor, reduce=None) -> None:
        """Fold in one batch's draws: t [N] (2..T) and their KL_t [N]; reduce(tensor) sums over processes."""
        sums = torch.zeros_like(self.second_moment).index_add_(0, t - 2, kl.detach().double().square())
        counts = torch.zeros_like(self.seen).index_add_(0, t - 2, torch.ones_like(kl, dtype=self.seen.dtype))
        if reduce is not None:
            both = reduce(torch.stack([sums, counts]))
            sums, counts = both[0], both[1]
        batch = sums / counts.clamp(min=1)
        moved = torch.where(self.seen > 0, (1 - self.rate) * self.second_moment + self.rate * batch, batch)
        self.second_moment.copy_(torch.where(counts > 0, moved, self.second_moment))
        self.seen.add_(counts)

    def state(self) -> dict[str, torch.Tensor]:
        return {"second_moment": self.second_moment.detach().cpu().clone(), "seen": self.seen.detach().cpu().clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for name in ("second_moment", "seen"):
            getattr(self, name).copy_(state[name])
