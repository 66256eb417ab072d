"""Multiplying a trained diffusion model by another distribution r(x): perturbed reverse kernels (paper 2.5,
App. C; docs/paper.md §6).

The target is p~(x0) ∝ p(x0) r(x0). Each reverse kernel becomes p~(x_{t-1}|x_t) ∝ p(x_{t-1}|x_t) r_{t-1}(x_{t-1})
(Eq. 22), with r_t = r at every t (Eq. 23, the paper's choice) or tempered, r_t = r^((T - t)/T), which leaves
p~(x_T) = pi and applies all of r at x_0 (paper 2.5.4). For a delta r on known coordinates a third choice,
"diffused", draws the known coordinates of x_{t-1} from the forward marginal q(x_{t-1} | x_0 = the given values)
(the replacement method of later work, Song et al. 2021; not in the paper) and clamps them at x_0. This module gives the kernels as pure torch functions and
packs a list of factors r into the `perturb(p, x_t, t) -> p~` hook of Diffusion.sample. For a delta r, dpm.core.smc
samples by sequential Monte Carlo instead (SMCDiff, Trippe et al. 2022; not in the paper either).

Which factors apply is the kind's to say (Diffusion.factors), and a delta r is multiplied in by the kind's own
Diffusion.clamp. Shapes: a kernel's parameters `p` are the diffusion's params, each [N, *D]: Gaussian (mu, log var),
binomial (c,) with c = p(x_{t-1} = 1 | x_t), categorical (log p_0, ..., log p_{C-1}). Every factor below is flat
where it carries no information (var_r = inf, d = 1/2, no known coordinate, log r constant) and then returns p
unchanged, bit for bit, so a perturbed sampler with a constant r draws exactly the plain sampler's samples (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from dpm.core.diffusion import Params

R_OVER_T = ("constant", "tempered", "diffused")
Perturb = Callable[[Params, torch.Tensor, torch.Tensor], Params]
LogR = Callable[[torch.Tensor], torch.Tensor]  # log r(x) for x [N, *D] -> [N], differentiable


def r_exponent(t: torch.Tensor, T: int, over_t: str) -> torch.Tensor:
    """The power w of r in the kernel from x_t into x_{t-1}, for paper times t [N] in 1..T: float64 [N].

    "constant": w = 1 (Eq. 23). "tempered": r_{t-1} = r^((T - (t - 1))/T), i.e. w = 1/T at the first step
    (t = T) rising to w = 1 at the last (t = 1, into x_0). "diffused" uses no power: w = 1."""
    if over_t in ("constant", "diffused"):
        return torch.ones(t.shape, dtype=torch.float64, device=t.device)
    if over_t == "tempered":
        return (T - t + 1).double() / T
    raise ValueError(f"r_over_t={over_t!r} is unknown; valid choices: {list(R_OVER_T)}")


def gaussian_product(p: Params, mu_r: torch.Tensor, var_r: torch.Tensor | float) -> Params:
    """N(x; mu, var) N(x; mu_r, var_r), normalised, per dimension; exact (App. C, the released denoiser):
    var_post = (1/var + 1/var_r)^-1, mu_post = var_post (mu/var + mu_r/var_r).

    Computed through the gain k = a / (1 + a), a = var / var_r: mu_post = mu + k (mu_r - mu),
    log var_post = log var - log1p(a). Where var_r = inf (r flat there) a = 0 and p comes back bit for bit.
    p = (mu, log var) [N, *D]; mu_r finite and var_r > 0 (may be inf), both broadcastable to [N, *D].
    Returns (mu_post, log var_post)."""
    mu, logvar = p
    a = torch.exp(logvar) / var_r
    return mu + a / (1 + a) * (mu_r - mu), logvar - torch.log1p(a)


def first_order_shift(p: Params, log_r: LogR, w: torch.Tensor | float = 1.0) -> Params:
    """Eq. 61, the perturbed Gaussian kernel for a smooth r to first order in the Taylor expansion of log r
    around the mean: N(mu + Sigma w grad log r(mu), Sigma) for r^w. Valid while the Hessian of -log r is small
    against Sigma^-1 (App. C). p = (mu, log var) [N, *D]; log_r maps [N, *D] -> [N]; w broadcastable to
    [N, *D]. The variance is unchanged; the mean moves by the variance times the gradient."""
    mu, logvar = p
    with torch.enable_grad():
        x = mu.detach().requires_grad_(True)
        log_r_x = log_r(x)
        if log_r_x.requires_grad:
            (grad,) = torch.autograd.grad(log_r_x.sum(), x, allow_unused=True, materialize_grads=True)
        else:  # r does not depend on x: no shift
            grad = torch.zeros_like(mu)
    return mu + torch.exp(logvar) * w * grad, logvar


def bernoulli_product(p: Params, d: torch.Tensor | float) -> Params:
    """B(x; c) times r, normalised, per bit; exact (Table App.1 with c d in the denominator, docs/paper.md §6.1):
    c_post = c d / (c d + (1 - c)(1 - d)), d = r(x = 1) / (r(x = 0) + r(x = 1)).

    Written as c + c (1 - c)(2d - 1) / (c d + (1 - c)(1 - d)), which is the same number and returns c bit for bit
    where r is flat (d = 1/2). p = (c,) [N, *D]; d in (0, 1) broadcastable to [N, *D] (d in {0, 1} is a clamp)."""
    (c,) = p
    return (c + c * (1 - c) * (2 * d - 1) / (c * d + (1 - c) * (1 - d)),)


def diffused_clamp(p: Params, known: torch.Tensor, x_known: torch.Tensor, t: torch.Tensor, diffusion) -> Params:
    """The known coordinates of x_{t-1} drawn from q(x_{t-1} | x_0 = x_known) (diffusion.marginal), the others
    from p; at the last step (t = 1) the clamp itself. So the network sees known coordinates as noisy as the rest
    of x_t, as in training. p [N, *D]; known bool, x_known broadcastable to [N, *D]; t [N] paper times."""
    q = diffusion.marginal(x_known.expand_as(p[0]), (t - 1).clamp_min(1))
    replaced = tuple(torch.where(known, q_i.expand_as(p_i), p_i) for q_i, p_i in zip(q, p))
    last = (t == 1).reshape(-1, *([1] * (p[0].dim() - 1)))
    return tuple(torch.where(last, c, r) for c, r in zip(diffusion.clamp(p, known, x_known), replaced))


# ---- factors r, each applied to a kernel at one step ------------------------------------------------------------
@dataclass
class Step:
    """What a factor needs of the step from x_t into x_{t-1}: t [N], the exponent w of r (broadcastable to
    [N, *D]), the choice of r over t, and the diffusion (its clamp and forward marginals)."""

    t: torch.Tensor
    w: torch.Tensor
    over_t: str
    diffusion: object


@dataclass
class GaussianR:
    """r(x) = N(x; mu_r, var_r), diagonal (denoising: mu_r = y, var_r = sigma_d^2; soft constraints).
    r^w = N(mu_r, var_r / w) up to a constant."""

    what = "a Gaussian r"

    mu_r: torch.Tensor
    var_r: torch.Tensor | float

    def __call__(self, p: Params, step: Step) -> Params:
        return gaussian_product(p, self.mu_r, self.var_r / step.w)


@dataclass
class DeltaR:
    """r(x) = delta(x[known] - x_known) (inpainting, completion), multiplied in by the kind's own clamp
    (Diffusion.clamp); a delta to any power w > 0 is itself. With r_over_t = "diffused" the known coordinates follow
    the forward marginal instead (diffused_clamp)."""

    what = "a delta r on known coordinates"

    known: torch.Tensor
    x_known: torch.Tensor
    diffusable = True

    def __call__(self, p: Params, step: Step) -> Params:
        if step.over_t == "diffused":
            return diffused_clamp(p, self.known, self.x_known, step.t, step.diffusion)
        return step.diffusion.clamp(p, self.known, self.x_known)


@dataclass
class SmoothR:
    """A differentiable log r(x) [N, *D] -> [N] (a half-plane, a classifier's log-probability), applied to
    first order (Eq. 61); grad log r^w = w grad log r."""

    what = "a smooth r to first order"

    log_r: LogR

    def __call__(self, p: Params, step: Step) -> Params:
        return first_order_shift(p, self.log_r, step.w)


@dataclass
class BernoulliR:
    """r over bits with d = r(1) / (r(0) + r(1)) per bit; r^w has d_w = sigmoid(w logit d)."""

    what = "an r over bits"

    d: torch.Tensor | float

    def __call__(self, p: Params, step: Step) -> Params:
        d = torch.as_tensor(self.d, dtype=p[0].dtype, device=p[0].device)
        d_w = torch.where(step.w == 1, d, torch.sigmoid(step.w * torch.logit(d)))  # w = 1 keeps d bit for bit
        return bernoulli_product(p, d_w)


Factor = GaussianR | DeltaR | SmoothR | BernoulliR


def check_factor(diffusion, factor: type, task: str = "") -> None:
    """Raise ValueError unless the diffusion's kernels take the factor type (its kind's `factors`)."""
    if not issubclass(factor, diffusion.factors):
        takes = ", ".join(f"{f.__name__} ({f.what})" for f in diffusion.factors) or "none"
        raise ValueError(f"{f'task={task} needs' if task else 'the sampler needs'} a kernel that takes {factor.what} "
                         f"({factor.__name__}); {diffusion.kind} diffusion's kernels take {takes}")


def perturbation(diffusion, factors: Sequence[Factor], over_t: str = "constant") -> Perturb:
    """The hook for diffusion.sample(perturb=...): every step's kernel p(x_{t-1}|x_t) [N, *D] times each factor
    r_{t-1} in turn (over_t: see R_OVER_T). Raises ValueError for a factor that is not among the diffusion's own
    (Diffusion.factors) or does not suit the choice over t."""
    if over_t not in R_OVER_T:
        raise ValueError(f"r_over_t={over_t!r} is unknown; valid choices: {list(R_OVER_T)}")
    for factor in factors:
        check_factor(diffusion, type(factor))
        if over_t == "diffused" and not getattr(factor, "diffusable", False):
            raise ValueError(f"r_over_t=diffused applies to a delta r on known coordinates (task=inpaint, "
                             f"complete), not to {type(factor).__name__}; use constant or tempered")

    def perturb(p: Params, xt: torch.Tensor, t: torch.Tensor) -> Params:
        w = r_exponent(t, diffusion.T, over_t).to(p[0].dtype).reshape(-1, *([1] * (p[0].dim() - 1)))
        step = Step(t, w, over_t, diffusion)
        for factor in factors:
            p = factor(p, step)
        return p

    return perturb
