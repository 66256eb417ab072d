"""Gaussian diffusion (paper Table App.1, docs/paper.md §1.2, 2.2-2.3, 3.2).

pi = N(0, I); q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I). Distributions travel as
(mean, log-variance) pairs, each [N, *D] or broadcastable to it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dpm.core.diffusion import Diffusion, Params, compute_dtype, standard_normal, sum_dims
from dpm.core.posterior import DeltaR, GaussianR, SmoothR
from dpm.core.schedules import Schedule

LOG_2PI = math.log(2 * math.pi)
REVERSE_FORMS = ("code", "paper")


def normal_kl(mean_q: torch.Tensor, logvar_q: torch.Tensor, mean_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_q, e^logvar_q) || N(mean_p, e^logvar_p)) per element (docs/paper.md §3.2), nats."""
    return 0.5 * (logvar_p - logvar_q + torch.exp(logvar_q - logvar_p)
                  + (mean_q - mean_p) ** 2 * torch.exp(-logvar_p) - 1.0)


def normal_entropy(logvar: torch.Tensor) -> torch.Tensor:
    """H(N(., e^logvar)) = (1 + log 2 pi + logvar) / 2 per element, nats."""
    return 0.5 * (1.0 + LOG_2PI + logvar)


class GaussianDiffusion(Diffusion):
    """Gaussian diffusion with the reverse kernel of docs/paper.md §2.2-2.3.

    reverse_form="code" (default, the released code): mu = sqrt(1 - beta_t) x_t + sqrt(beta_t) z_mu,
    var = sigmoid(z_var / sqrt(T) + logit beta_t). reverse_form="paper" (Eq. 64-65): var = sigmoid(z_var +
    logit beta_t), mu = (x_t - z_mu)(1 - var) + z_mu. Both are perturbations of the forward kernel, so a
    network whose output is 0 gives (nearly) the exact reversal of the stationary N(0, I) process.
    """

    kind = "gaussian"
    n_outputs = 2  # z_mu, z_var
    factors = (GaussianR, DeltaR, SmoothR)  # exact Gaussian r (denoising), a delta (inpainting), Eq. 61 (smooth r)

    def __init__(self, schedule: Schedule, reverse_form: str = "code") -> None:
        super().__init__(schedule)
        if reverse_form not in REVERSE_FORMS:
            raise ValueError(f"diffusion.reverse_form={reverse_form!r} is unknown; valid choices: {list(REVERSE_FORMS)}")
        self.reverse_form = reverse_form

    def check_data(self, x0: torch.Tensor) -> None:
        """Sequences of 0 / 1 values [N, L] are refused: a Gaussian model of them puts density on two points, so its
        bound grows without limit with training and is no likelihood of the sequences (binomial diffusion models
        their probability)."""
        if x0.dim() == 2 and bool(((x0 == 0) | (x0 == 1)).all()):
            raise ValueError("the data are sequences of 0 / 1 values: model them with diffusion=binomial "
                             "schedule=binomial (Gaussian diffusion would fit a density to two points, and its K in "
                             "bits/seq would be no likelihood of the sequences)")

    def derive(self, beta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every coefficient below, float64 [T] from beta float64 [T] (ab = alpha_bar)."""
        ab = torch.cumprod(1.0 - beta, 0)
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        one_m_ab = 1.0 - ab
        # t = 1 has no posterior (var 0); a placeholder keeps log() and its gradient finite for learned beta
        var_post = torch.cat([beta[:1], (beta * (1.0 - ab_prev) / one_m_ab)[1:]])
        return {
            "sqrt_ab": ab.sqrt(), "log1m_ab": torch.log1p(-ab), "sqrt_1m_ab": one_m_ab.sqrt(),
            "post_c0": ab_prev.sqrt() * beta / one_m_ab,
            "post_ct": (1.0 - beta).sqrt() * (1.0 - ab_prev) / one_m_ab,
            "post_logvar": var_post.log(),
            "sqrt_beta": beta.sqrt(), "sqrt_1m_beta": (1.0 - beta).sqrt(), "log_beta": beta.log(),
            "logit_beta": torch.logit(beta),
        }

    def derive_constants(self, derived):
        """bound_const's two numbers: per dimension, bound_const = A + B x0^2 (see bound_const)."""
        ab, log_v = derived["sqrt_ab"] ** 2, derived["log1m_ab"]
        v = 1.0 - ab
        return {"bound_const_A": 0.5 * (v[0] - v[-1] + log_v[-1] - log_v[0] - LOG_2PI),
                "bound_const_B": 0.5 * (ab[0] - ab[-1] - 1.0)}

    def bound_const(self, x0: torch.Tensor) -> torch.Tensor:
        """Diffusion.bound_const in closed form: [N] nats. With q_t = N(c_t x0, v_t) (c_t^2 = alpha_bar_t,
        v_t = 1 - alpha_bar_t), -E[log pi] = (log 2 pi + c^2 x^2 + v) / 2, H = (1 + log 2 pi + log v) / 2 and
        log pi(x) = -(log 2 pi + x^2) / 2, its five terms add up per dimension to A + B x0^2 with
        A = (v_1 - v_T + log v_T - log v_1 - log 2 pi) / 2 and B = (alpha_bar_1 - alpha_bar_T - 1) / 2:
        D A + B sum_d x0_d^2 for an example of D dimensions."""
        with torch.autocast(device_type=x0.device.type, enabled=False):
            x0 = x0.to(compute_dtype(x0))
            constants = self.tables()[x0.dtype].constants
            return constants["bound_const_B"] * sum_dims(x0 * x0) + constants["bound_const_A"] * x0[0].numel()

    def marginal(self, x0: torch.Tensor, t: torch.Tensor) -> Params:
        """q(x_t | x_0) = N(sqrt(alpha_bar_t) x0, 1 - alpha_bar_t)."""
        return self.coef("sqrt_ab", t, x0) * x0, self.coef("log1m_ab", t, x0).expand_as(x0)

    def q_sample(self, x0, t, generator=None, keys=None, noise=None):
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, eps ~ N(0, I) (or eps = noise): [N, *D]."""
        eps = standard_normal(x0, t, generator, keys) if noise is None else noise
        xt = self.coef("sqrt_ab", t, x0) * x0 + self.coef("sqrt_1m_ab", t, x0) * eps
        return xt.to(x0.dtype)

    def q_posterior(self, x0, xt, t):
        """q(x_{t-1} | x_t, x_0) = N(mu_post, var_post) for t >= 2, the product of two Gaussians (docs/paper.md §1.2):
        var_post = beta_t (1 - ab_{t-1}) / (1 - ab_t),
        mu_post = sqrt(ab_{t-1}) beta_t / (1 - ab_t) x0 + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) xt."""
        mu_post = self.coef("post_c0", t, x0) * x0 + self.coef("post_ct", t, xt) * xt
        return mu_post, self.coef("post_logvar", t, x0).expand_as(x0)

    def p_params(self, out, xt, t):
        """p(x_{t-1} | x_t) = N(mu, var) from out [N, 2, *D] = (z_mu, z_var)."""
        z_mu, z_var = out[:, 0], out[:, 1]
        logit_beta = self.coef("logit_beta", t, xt)
        if self.reverse_form == "code":
            logvar = F.logsigmoid(z_var / self.T**0.5 + logit_beta)
            mu = self.coef("sqrt_1m_beta", t, xt) * xt + self.coef("sqrt_beta", t, xt) * z_mu
        else:
            logvar = F.logsigmoid(z_var + logit_beta)
            mu = (xt - z_mu) * (1.0 - torch.exp(logvar)) + z_mu
        return mu, logvar

    def forward_kernel(self, x, t):
        return self.coef("sqrt_1m_beta", t, x) * x, self.coef("log_beta", t, x).expand_as(x)

    def clamp(self, p, known, x_known):
        """Mean x_known and variance 0 (log var -inf, so a draw mu + exp(log var / 2) eps is x_known exactly) where
        known."""
        mu, logvar = p
        return torch.where(known, x_known, mu), torch.where(known, float("-inf"), logvar)

    def kl(self, q, p):
        return normal_kl(q[0], q[1], p[0], p[1])

    def entropy(self, q):
        return normal_entropy(q[1])

    def prior_cross_entropy(self, q):
        """-E_q[log N(x; 0, 1)] = (log 2 pi + mean^2 + var) / 2."""
        mean, logvar = q
        return 0.5 * (LOG_2PI + mean**2 + torch.exp(logvar))

    def log_prior(self, x):
        return -0.5 * (LOG_2PI + x**2)

    def log_prob(self, p, x):
        """log N(x; mean, e^logvar) = -(log 2 pi + logvar + (x - mean)^2 e^-logvar) / 2 per dimension."""
        mean, logvar = p
        return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))

    def draw(self, p, generator=None):
        mean, logvar = p
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def prior_sample(self, shape, generator=None, device="cpu"):
        return torch.randn(shape, generator=generator, device=device)
