"""Forward diffusion-rate schedules beta_1..beta_T (docs/paper.md §4).

Paper time t = 1..T is stored at index t - 1. Every schedule is built in float64 and kept as a buffer,
so it follows `.to(device)` and lands in the checkpoint; `.to(dtype)`, `.half()` and `.bfloat16()` leave it in
float64 (a bf16 schedule would round beta_t near 1 to 1 and make K NaN). `Schedule(learned=True)` adds the
paper's learned perturbation of beta_2..beta_T (section 2.4.1), written as the released code writes it
(sigmoid(logit(baseline) + temporal-basis perturbation), docs/paper.md §4.2), with beta_1 held fixed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dpm.core.temporal import bump_basis

BETA_MIN = 1e-6  # the released code's floor on every beta_t
BETA_MAX_MARGIN = 1e-5  # ... and its margin below 1


def sd2015_beta(T: int, step1_beta: float = 0.001) -> torch.Tensor:
    """The released code's baseline (docs/paper.md §4.2): beta_t = 1/linspace(T, 2, T), plus step1_beta at t = 1.

    Each step destroys about a fraction 1/T of the remaining signal variance. Returns float64 [T].
    """
    base = 1.0 / torch.linspace(T, 2, T, dtype=torch.float64)
    floor = torch.full((T,), BETA_MIN, dtype=torch.float64)
    floor[0] += step1_beta
    # min + sigmoid(logit(base)) * (1 - min - margin), exactly as generate_beta_arr with a zero perturbation.
    return floor + base * (1.0 - floor - BETA_MAX_MARGIN)


def geometric_beta(T: int, beta_1: float = 1e-5, beta_T: float = 0.5) -> torch.Tensor:
    """beta_t = beta_1 (beta_T / beta_1)^((t-1)/(T-1)): tiny first steps, as the Swiss roll needs. float64 [T]."""
    frac = torch.linspace(0.0, 1.0, T, dtype=torch.float64)
    return beta_1 * (beta_T / beta_1) ** frac


def linear_beta(T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """Ho et al. (2020): beta linear in t from beta_1 to beta_T. float64 [T]."""
    return torch.linspace(beta_1, beta_T, T, dtype=torch.float64)


def cosine_beta(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021): alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2), betas clipped at max_beta. float64 [T]."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def binomial_beta(T: int) -> torch.Tensor:
    """Binomial diffusion (paper 2.4.1): beta_t = (T - t + 1)^-1, so prod_{s<=t}(1 - beta_s) = (T - t)/T. float64 [T]."""
    t = torch.arange(1, T + 1, dtype=torch.float64)
    return 1.0 / (T - t + 1)


SCHEDULES = {
    "sd2015": sd2015_beta,
    "geometric": geometric_beta,
    "linear": linear_beta,
    "cosine": cosine_beta,
    "binomial": binomial_beta,
}


class Schedule(nn.Module):
    """beta_1..beta_T as a module: a fixed float64 buffer, optionally with a learned perturbation.

    kind: one of SCHEDULES; kwargs go to its builder. With learned=True, beta_2..beta_T become
    min + sigmoid(logit(base_t) + sum_j a_j g_j(t)) (1 - min - margin), with a_j (n_basis of them, float64,
    initialised to 0 so training starts from the base schedule) trained by gradient ascent on K through the
    frozen-noise reparameterisation (paper 3.5); beta_1 stays fixed to prevent overfitting (paper 4.1).
    """

    def __init__(self, kind: str, T: int, learned: bool = False, n_basis: int = 10, **kwargs: float) -> None:
        super().__init__()
        if kind not in SCHEDULES:
            raise ValueError(f"schedule.kind={kind!r} is unknown; valid choices: {sorted(SCHEDULES)}")
        if int(T) < 2:
            raise ValueError(f"T={T} is invalid: the diffusion needs T >= 2 steps (the last reverse step is fixed)")
        self.kind, self.T, self.learned = kind, int(T), learned
        base = SCHEDULES[kind](self.T, **kwargs)
        if not bool(((base > 0) & (base <= 1)).all()):
            raise ValueError(f"schedule {kind} with {kwargs} gives beta outside (0, 1]")
        self.register_buffer("base", base)
        if learned:
            self.register_buffer("basis", bump_basis(self.T, n_basis).to(torch.float64))  # [T, J]
            self.perturb = nn.Parameter(torch.zeros(n_basis, dtype=torch.float64))

    def _apply(self, fn, recurse=True):
        """Moves follow the module (device); dtype casts do not: the schedule and its parameters stay float64."""
        def keep_dtype(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            return out if out.dtype == t.dtype else t.to(out.device)
        return super()._apply(keep_dtype, recurse)

    def tensors(self) -> list[torch.Tensor]:
        """The tensors beta is computed from (base, and for a learned schedule basis and perturb)."""
        return [self.base, self.basis, self.perturb] if self.learned else [self.base]

    def forward(self) -> torch.Tensor:
        """beta_t for t = 1..T, float64 [T]."""
        if not self.learned:
            return self.base
        hi = 1.0 - BETA_MIN - BETA_MAX_MARGIN
        u = ((self.base[1:] - BETA_MIN) / hi).clamp(1e-12, 1 - 1e-12)
        rest = BETA_MIN + torch.sigmoid(torch.logit(u) + self.basis[1:] @ self.perturb) * hi
        return torch.cat([self.base[:1], rest])
