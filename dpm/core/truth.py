"""The true log-likelihood of the data sets whose density is known, to set beside the bound K (docs/contracts.md, contract 9).

- The heartbeat (docs/paper.md §7.1): `period` equiprobable sequences, so log p(x0) = log(1/period) for each of them.
- The noisy Swiss roll (scikit-learn's make_swiss_roll, columns 0 and 2): y = c(t) + sigma eps with
  c(t) = (t cos t, t sin t), t ~ U(1.5 pi, 4.5 pi), eps ~ N(0, I_2). Its density
  p(y) = 1/(b - a) int_a^b N(y; c(t), sigma^2 I) dt is computed by quadrature over the roll parameter t, and the
  model sees x = (y - shift) / scale, so log p(x) = log p(y) + D log(scale) (the Jacobian of the normalisation).

Every function returns nats per example. `truth_fields` turns per-example K and truth, both in the data set's unit,
into the eval.json keys.
"""

from __future__ import annotations

import math

import torch

from dpm.core.stats import mean_and_stderr

ROLL_T = (1.5 * math.pi, 4.5 * math.pi)  # make_swiss_roll: t = 1.5 pi (1 + 2 u), u ~ U(0, 1)
LOG_2PI = math.log(2 * math.pi)


def heartbeat_log_likelihood(is_pattern: torch.Tensor, period: int) -> torch.Tensor:
    """log p(x0) of heartbeat sequences, nats [N]: log(1/period) where is_pattern [N] (bool), else -inf."""
    inside = torch.full(is_pattern.shape, -math.log(period), dtype=torch.float64)
    return torch.where(is_pattern.cpu(), inside, torch.full_like(inside, -math.inf))


def roll_curve(t: torch.Tensor) -> torch.Tensor:
    """c(t) = (t cos t, t sin t), the noise-free roll: t [M] -> [M, 2]."""
    return torch.stack([t * torch.cos(t), t * torch.sin(t)], -1)


def simpson_log_weights(n: int, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes t [n] (n odd) on [a, b] and log of composite Simpson weights [n], float64: sum_k w_k f(t_k) ~ int f."""
    if n < 3 or n % 2 == 0:
        raise ValueError(f"Simpson's rule needs an odd number of nodes >= 3, got {n}")
    t = torch.linspace(a, b, n, dtype=torch.float64)
    w = torch.full((n,), 2.0, dtype=torch.float64)
    w[1::2] = 4.0
    w[0] = w[-1] = 1.0
    return t, torch.log(w * (b - a) / (3 * (n - 1)))


def roll_nodes(noise: float, per_width: float = 4.0, min_nodes: int = 257) -> int:
    """How many Simpson nodes resolve the integrand: it is a bump in t of width noise / |c'(t)| and
    |c'(t)| = sqrt(1 + t^2) is largest at t = 4.5 pi, so the step is that width / per_width. Odd."""
    a, b = ROLL_T
    width = noise / math.sqrt(1 + b * b)
    n = max(min_nodes, math.ceil((b - a) / width * per_width) + 1)
    return n + 1 - n % 2


def swiss_roll_raw_log_density(y: torch.Tensor, noise: float, n_nodes: int | None = None,
                               chunk: int = 1024) -> torch.Tensor:
    """log p(y) of the raw 2-D noisy roll (columns 0 and 2 of make_swiss_roll), nats: y [N, 2] -> float64 [N].

    p(y) = 1/(b - a) int_a^b N(y; c(t), noise^2 I_2) dt by composite Simpson over t with a log-sum-exp, in
    float64, `chunk` points at a time (the [chunk, n_nodes] table is the memory cost).
    """
    if noise <= 0:
        raise ValueError(f"noise={noise}: the noise-free roll lies on a curve and has no density in 2-D")
    a, b = ROLL_T
    t, log_w = simpson_log_weights(n_nodes or roll_nodes(noise), a, b)
    c = roll_curve(t)  # [M, 2]
    log_norm = -LOG_2PI - 2 * math.log(noise) - math.log(b - a)  # N's constant in 2-D and the uniform density of t
    out = []
    for part in y.to(torch.float64).split(chunk):
        sq = torch.cdist(part, c).pow(2)  # [n, M]
        out.append(torch.logsumexp(log_w - sq / (2 * noise * noise), dim=1) + log_norm)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def swiss_roll_log_likelihood(x0: torch.Tensor, noise: float, shift: torch.Tensor, scale: float,
                              n_nodes: int | None = None) -> torch.Tensor:
    """log p(x0) of normalised roll points x0 = (y - shift) / scale, nats float64 [N]: the raw density at
    y = shift + scale x0 plus the log-Jacobian D log(scale), D = 2."""
    x0 = x0.detach().cpu().to(torch.float64)
    y = shift.detach().cpu().to(torch.float64) + scale * x0
    return swiss_roll_raw_log_density(y, noise, n_nodes) + x0.shape[1] * math.log(scale)


def truth_fields(K: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """eval.json's keys for per-example K [N] and true log-likelihood [N], both in the data set's unit:
    the truth's mean and standard error over the same examples, and the gap K - truth with the standard error of
    the paired differences (K_i - truth_i), which is smaller than either alone because both vary with x0_i."""
    K, truth = K.detach().cpu().double().flatten(), truth.detach().cpu().double().flatten()
    if K.shape != truth.shape:
        raise ValueError(f"K {tuple(K.shape)} and truth {tuple(truth.shape)} must hold the same examples")
    truth_mean, truth_se = mean_and_stderr(truth, ddof=1)
    gap, gap_se = mean_and_stderr(K - truth, ddof=1)
    return {"true_log_likelihood": truth_mean, "true_log_likelihood_stderr": truth_se,
            "gap_to_truth": gap, "gap_to_truth_stderr": gap_se}
