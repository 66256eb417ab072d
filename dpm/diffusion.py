"""What every diffusion kind shares: the bound K of Eq. 14 (with its constant terms computed exactly) and
ancestral sampling. Gaussian (dpm.gaussian) and binomial (dpm.binomial) diffusion fill in the distributions.

Shapes: data x0, xt [N, *D] (D = (2,) for the Swiss roll, (20,) for the heartbeat, (C, H, W) for images);
times t [N] long in paper units 1..T; network output [N, n_outputs, *D]. Every log-probability is in nats.
A distribution's parameters travel as a tuple of tensors ("params") whose meaning the kind defines.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from dpm.schedules import Schedule

Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # net(xt [N, *D], t [N]) -> [N, n_outputs, *D]
Params = tuple[torch.Tensor, ...]


def at(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr[t - 1] for paper times t [N], shaped [N, 1, ...] to broadcast against `like` [N, *D], in like's dtype."""
    return arr[t - 1].to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def sum_dims(x: torch.Tensor) -> torch.Tensor:
    """[N, *D] -> [N]."""
    return x.flatten(1).sum(1)


class Diffusion(nn.Module):
    """A forward process q with stationary distribution pi and the reverse kernel read from a network."""

    kind: str = ""
    n_outputs: int = 1  # network channels per data dimension

    def __init__(self, schedule: Schedule) -> None:
        super().__init__()
        self.schedule = schedule
        self.T = schedule.T

    # ---- schedule-derived quantities, float64 [T] -------------------------------------------------
    def beta(self) -> torch.Tensor:
        return self.schedule()

    def alpha_bar(self) -> torch.Tensor:
        """prod_{s<=t} (1 - beta_s), float64 [T] (exactly 0 at t = T for the binomial schedule)."""
        return torch.cumprod(1.0 - self.beta(), 0)

    # ---- what each kind defines ---------------------------------------------------------------------
    def check_data(self, x0: torch.Tensor) -> None:
        """Raise ValueError when x0 is not data this diffusion can model."""

    def marginal(self, x0: torch.Tensor, t: torch.Tensor) -> Params:
        """q(x_t | x_0)."""
        raise NotImplementedError

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw of x_t ~ q(x_t | x_0), differentiable in beta where the kind allows (frozen noise, paper 3.5)."""
        raise NotImplementedError

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> Params:
        """q(x_{t-1} | x_t, x_0), t >= 2."""
        raise NotImplementedError

    def p_params(self, out: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> Params:
        """p(x_{t-1} | x_t) from the network output out [N, n_outputs, *D], t >= 2."""
        raise NotImplementedError

    def forward_kernel(self, x: torch.Tensor, t: torch.Tensor) -> Params:
        """T_pi(. | x; beta_t), i.e. q(x_t | x_{t-1} = x); also the fixed last reverse step p(x_0 | x_1) at t = 1."""
        raise NotImplementedError

    def kl(self, q: Params, p: Params) -> torch.Tensor:
        """KL(q || p) per dimension, [N, *D]."""
        raise NotImplementedError

    def entropy(self, q: Params) -> torch.Tensor:
        """H(q) per dimension, [N, *D]."""
        raise NotImplementedError

    def prior_cross_entropy(self, q: Params) -> torch.Tensor:
        """-E_q[log pi(x)] per dimension, [N, *D]."""
        raise NotImplementedError

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """log pi(x) per dimension, [N, *D]."""
        raise NotImplementedError

    def draw(self, p: Params, generator: torch.Generator | None = None) -> torch.Tensor:
        """One sample from the distribution p."""
        raise NotImplementedError

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
        """x_T ~ pi, [N, *D]."""
        raise NotImplementedError

    # ---- the bound ----------------------------------------------------------------------------------
    def kl_term(self, net: Net, x0: torch.Tensor, t: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) at one draw of x_t ~ q(x_t|x_0), summed over dims: [N] nats.

        The term of Eq. 14 for each example's own t (t [N], 2..T). The network may run under autocast; its
        output is cast to float32 and the distributions are computed with autocast off.
        """
        xt = self.q_sample(x0, t, generator)
        out = net(xt, t)
        with torch.autocast(device_type=x0.device.type, enabled=False):
            out = out.float()
            return sum_dims(self.kl(self.q_posterior(x0, xt, t), self.p_params(out, xt, t)))

    def bound_const(self, x0: torch.Tensor) -> torch.Tensor:
        """The terms of K that involve no network, exactly, per example: [N] nats.

        E_q[log pi(x_T)] + H_q(X_T|x0) - H_q(X_1|x0) + log pi(x0) - E_q[log pi(x_1)|x0].
        Eq. 14 writes the first as -H_p(X_T) and drops the last two (the fixed step p(x0|x1) of App. B.2);
        both shortcuts hold only on average and only for data matched to pi, so they are kept here, and then
        K_i <= log p(x0_i) holds for every example.
        """
        T = torch.full((x0.shape[0],), self.T, device=x0.device, dtype=torch.long)
        one = torch.ones_like(T)
        with torch.autocast(device_type=x0.device.type, enabled=False):
            x0 = x0.float()
            qT, q1 = self.marginal(x0, T), self.marginal(x0, one)
            per_dim = (-self.prior_cross_entropy(qT) + self.entropy(qT) - self.entropy(q1)
                       + self.log_prior(x0) + self.prior_cross_entropy(q1))
        return sum_dims(per_dim)

    def L_null(self, x0: torch.Tensor) -> torch.Tensor:
        """log pi(x0) per example, [N] nats: the log-likelihood of the data under the prior (Table 1's L_null)."""
        with torch.autocast(device_type=x0.device.type, enabled=False):
            return sum_dims(self.log_prior(x0.float()))

    # ---- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, net: Net, shape: tuple[int, ...], generator: torch.Generator | None = None,
               device: torch.device | str = "cpu", keep: tuple[int, ...] = (),
               on_step: Callable[[int], None] | None = None,
               perturb: Callable[[Params, torch.Tensor, torch.Tensor], Params] | None = None,
               x_T: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Ancestral sampling x_T ~ pi, x_{t-1} ~ p(x_{t-1}|x_t) for t = T..2, then the fixed p(x_0|x_1).

        Unlike the released sampler, the final fixed step is applied (PAPER.md 6.3). Returns x0 [N, *D] and
        the states x_t for every t in `keep` (t = T..0). on_step(1) is called after each of the T steps
        (a dpm.progress.Progress's update).
        perturb(p, x_t, t) -> p~ replaces every step's kernel, the fixed last one included, by the perturbed
        kernel p(x_{t-1}|x_t) r(x_{t-1}) / Z (Eq. 22; dpm.posterior). x_T [N, *D], when given, is the start
        state in place of a draw from pi (denoising starts from the observation y, PAPER.md 6.3).
        """
        x = self.prior_sample(shape, generator, device) if x_T is None else x_T
        kept = {self.T: x} if self.T in keep else {}
        for step in range(self.T, 0, -1):
            t = torch.full((shape[0],), step, device=x.device, dtype=torch.long)
            if step >= 2:
                out = net(x, t)
                with torch.autocast(device_type=x.device.type, enabled=False):
                    p = self.p_params(out.float(), x, t)
            else:
                p = self.forward_kernel(x, t)
            if perturb is not None:
                p = perturb(p, x, t)
            x = self.draw(p, generator)
            if step - 1 in keep:
                kept[step - 1] = x
            if on_step is not None:
                on_step(1)
        return x, kept
