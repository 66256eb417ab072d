"""Binomial diffusion (paper Table App.1, docs/paper.md §1.3 and 2.4) over binary data.

pi = B(p) independently per bit; q(x_t | x_{t-1}) = B(x_{t-1}(1 - beta_t) + p beta_t). A Bernoulli travels
as the 1-tuple (probability of a 1,) with shape [N, *D]. With the binomial schedule beta_t = (T - t + 1)^-1
(dpm.core.schedules) alpha_bar_T = 0, so x_T ~ pi whatever x0. The bound K (dpm.core.diffusion, dpm.core.bound) takes from
here the Bernoulli KL, the entropies and the prior terms; its fixed last step contributes
E[log pi(x0) - log pi(x1) | x0], which vanishes only for sequences whose mean activity is p (the paper's
heartbeat: p = 0.2, docs/paper.md §1.3 and 7.2).
"""

from __future__ import annotations

import math

import torch

from dpm.core.diffusion import Diffusion, compute_dtype, keyed_uniform, sum_dims
from dpm.core.posterior import BernoulliR, DeltaR
from dpm.core.schedules import Schedule

EPS = 1e-6  # keeps logits finite where a kernel probability is exactly 0 or 1 (beta_T = 1)


def bernoulli_kl(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(B(q) || B(p)) per element, nats; exact at q in {0, 1} (0 log 0 = 0)."""
    p = p.clamp(EPS, 1 - EPS)
    return torch.xlogy(q, q) - q * torch.log(p) + torch.xlogy(1 - q, 1 - q) - (1 - q) * torch.log1p(-p)


def bernoulli_entropy(q: torch.Tensor) -> torch.Tensor:
    """H(B(q)) per element, nats."""
    return -(torch.xlogy(q, q) + torch.xlogy(1 - q, 1 - q))


class BinomialDiffusion(Diffusion):
    """Binomial diffusion towards B(p); reverse kernel B(x_{t-1}; f_b) with
    logit f_b = logit(x_t (1 - beta_t) + p beta_t) + z, z the network output (a perturbation of the forward
    kernel's own form, which is the exact reversal for independent B(p) data)."""

    kind = "binomial"
    noise = "uniform"
    n_outputs = 1
    factors = (DeltaR, BernoulliR)  # a delta on known bits (completion, inpainting), any r over bits (Table App.1)
    fixed_schedule = ("x_t is a Bernoulli draw with no frozen-noise reparameterisation (paper 3.5), so the gradient "
                      "that would train beta is biased (measured: the opposite sign of finite differences) and the "
                      "schedule collapses to the null model. The paper keeps it fixed: schedule.learned=false.")

    def __init__(self, schedule: Schedule, p: float = 0.5) -> None:
        super().__init__(schedule)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < float(p) < 1.0:
            raise ValueError(f"diffusion.p={p!r} is invalid: the Bernoulli prior's probability must be a number "
                             "strictly between 0 and 1 (the heartbeat uses its data's mean activity, 0.2)")
        self.p = float(p)

    @classmethod
    def fitted(cls, settings, x0, classes=None):
        """p given as null: the training split's mean activity (the heartbeat's B(0.2) is its data's, docs/paper.md
        §7.2), kept inside (0, 1)."""
        if "p" not in settings or settings["p"] is not None:
            return {}
        return {"p": min(max(x0.double().mean().item(), 1e-3), 1 - 1e-3)}

    @property
    def title(self):
        return f"binomial diffusion towards B({self.p:g})"

    def check_data(self, x0):
        """Binomial diffusion models bits: every value of x0 must be 0 or 1."""
        if not bool(((x0 == 0) | (x0 == 1)).all()):
            bad = x0[(x0 != 0) & (x0 != 1)].flatten()[:3].tolist()
            raise ValueError(f"binomial diffusion needs binary data (0 or 1); got values such as {bad}. "
                             "Use diffusion=gaussian for real-valued data.")

    def derive(self, beta):
        """The coefficients below, float64 [T] (ab = alpha_bar; on1 / on0 = q(x_t = 1 | x_{t-1} = 1 / 0))."""
        ab = torch.cumprod(1.0 - beta, 0)
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        on1, on0 = 1 - beta + self.p * beta, self.p * beta
        return {"alpha_bar": ab, "p_1m_ab": self.p * (1 - ab), "alpha_bar_prev": ab_prev,
                "p_1m_ab_prev": self.p * (1 - ab_prev), "1m_beta": 1 - beta, "p_beta": self.p * beta,
                "on1": on1, "off1": 1 - on1, "on0": on0, "off0": 1 - on0}

    def derive_constants(self, derived):
        """bound_const's two numbers: per bit, bound_const = f(0) + (f(1) - f(0)) x0 (see bound_const)."""
        ab, m0 = derived["alpha_bar"], derived["p_1m_ab"]
        log_p, log_1mp = math.log(self.p), math.log1p(-self.p)

        def f(x0: float) -> torch.Tensor:  # the five terms of Diffusion.bound_const for one bit x0
            m_T, m_1 = x0 * ab[-1] + m0[-1], x0 * ab[0] + m0[0]
            cross_entropy = lambda m: -(m * log_p + (1 - m) * log_1mp)  # noqa: E731
            return (-cross_entropy(m_T) + bernoulli_entropy(m_T) - bernoulli_entropy(m_1)
                    + (x0 * log_p + (1 - x0) * log_1mp) + cross_entropy(m_1))

        f0 = f(0.0)
        return {"bound_const_f0": f0, "bound_const_slope": f(1.0) - f0}

    def bound_const(self, x0):
        """Diffusion.bound_const in closed form for bits: [N] nats. Every term depends on a bit x0 only through
        q(x_t = 1 | x0) = x0 alpha_bar_t + p (1 - alpha_bar_t), so per bit it is f(0) + (f(1) - f(0)) x0, and
        per example D f(0) + (f(1) - f(0)) sum_d x0_d."""
        with torch.autocast(device_type=x0.device.type, enabled=False):
            x0 = x0.to(compute_dtype(x0))
            constants = self.tables()[x0.dtype].constants
            return constants["bound_const_slope"] * sum_dims(x0) + constants["bound_const_f0"] * x0[0].numel()

    def marginal(self, x0, t):
        """q(x_t = 1 | x_0) = x0 alpha_bar_t + p (1 - alpha_bar_t), t in 1..T."""
        return (x0 * self.coef("alpha_bar", t, x0) + self.coef("p_1m_ab", t, x0),)

    def q_sample(self, x0, t, generator=None, keys=None, noise=None):
        """x_t ~ B(q(x_t = 1 | x_0)): 1 where a uniform draw (keyed, or the given uniforms `noise`) falls below
        that probability. [N, *D]"""
        prob = self.marginal(x0, t)[0]
        if noise is None and keys is None:
            return torch.bernoulli(prob, generator=generator)
        u = keyed_uniform(x0, t, keys) if noise is None else noise
        return (u < prob).to(prob.dtype)

    def q_posterior(self, x0, xt, t):
        """q(x_{t-1} = 1 | x_t, x_0) for t in 2..T, by Bayes over the two states of x_{t-1}:
        q(x_t | x_{t-1}) q(x_{t-1} | x0), normalised. Strictly inside (0, 1) for 0 < beta_t and p in (0, 1)."""
        m = x0 * self.coef("alpha_bar_prev", t, x0) + self.coef("p_1m_ab_prev", t, x0)  # q(x_{t-1} = 1 | x0)
        not_xt = 1 - xt
        lik1 = xt * self.coef("on1", t, xt) + not_xt * self.coef("off1", t, xt)  # q(x_t | x_{t-1} = 1)
        lik0 = xt * self.coef("on0", t, xt) + not_xt * self.coef("off0", t, xt)  # q(x_t | x_{t-1} = 0)
        num = lik1 * m
        return (num / (num + lik0 * (1 - m)),)

    def p_params(self, out, xt, t):
        """p(x_{t-1} = 1 | x_t) = sigmoid(logit(x_t (1 - beta_t) + p beta_t) + z), z = out[:, 0] [N, *D].

        Clamped to [EPS, 1 - EPS] here rather than only inside the KL, so the model the bound is computed for is
        the one the sampler draws from."""
        fwd = self.forward_kernel(xt, t)[0].clamp(EPS, 1 - EPS)
        return (torch.sigmoid(torch.logit(fwd) + out[:, 0]).clamp(EPS, 1 - EPS),)

    def forward_kernel(self, x, t):
        return (x * self.coef("1m_beta", t, x) + self.coef("p_beta", t, x),)

    def clamp(self, p, known, x_known):
        """c = x_known (0 or 1) where known."""
        return (torch.where(known, x_known, p[0]),)

    def kl(self, q, p):
        return bernoulli_kl(q[0], p[0])

    def entropy(self, q):
        return bernoulli_entropy(q[0])

    def prior_cross_entropy(self, q):
        return -(q[0] * math.log(self.p) + (1 - q[0]) * math.log1p(-self.p))

    def log_prior(self, x):
        return x * math.log(self.p) + (1 - x) * math.log1p(-self.p)

    def log_prob(self, p, x):
        """log B(x; c) = x log c + (1 - x) log(1 - c) per bit, exact at c in {0, 1} (0 log 0 = 0)."""
        (c,) = p
        return torch.xlogy(x, c) + torch.xlogy(1 - x, 1 - c)

    def draw(self, p, generator=None):
        return torch.bernoulli(p[0], generator=generator)

    def prior_sample(self, shape, generator=None, device="cpu"):
        return torch.bernoulli(torch.full(shape, self.p, device=device), generator=generator)
