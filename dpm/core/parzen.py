"""The Parzen-window log-likelihood estimate of Goodfellow et al. (2014), which the paper's Table 2 uses for MNIST
(docs/paper.md §7.1, 7.3).

For a test image x [D] and samples s_1..s_M [D] (pixel values in [0, 1]):
    log p(x) = log (1/M) sum_j exp(-|x - s_j|^2 / (2 sigma^2)) - D log(sigma sqrt(2 pi))     (nats)
sigma is chosen from logspace(-1, 0, 10) by the best mean log-likelihood on validation images; the estimate is
reported as mean ± std / sqrt(N) over the test images (in bits in the paper's v8). The "perfect model" applies
the same estimate with training images in place of samples.

Computed in float64 in chunks of test images x samples: |x - s|^2 = |x|^2 + |s|^2 - 2 x.s (one matrix product
per chunk) and a running logsumexp over the sample chunks, so 10,000 x 10,000 x 784 fits in memory.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

SIGMAS = (-1.0, 0.0, 10)  # torch.logspace(start, end, steps): the estimator's grid of sigma


def sigma_grid(start: float = SIGMAS[0], end: float = SIGMAS[1], steps: int = SIGMAS[2]) -> torch.Tensor:
    """10^linspace(start, end, steps), float64 [steps]."""
    return torch.logspace(start, end, steps, dtype=torch.float64)


def parzen_log_likelihood(x: torch.Tensor, samples: torch.Tensor, sigmas: torch.Tensor | float,
                          chunk_x: int = 250, chunk_s: int = 2500,
                          on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """log p(x_i) under the Parzen window of `samples` for every sigma: float64 [K, N] nats.

    x [N, *D] and samples [M, *D] are flattened to D dimensions (on x's device); sigmas [K] or a float.
    on_step(n) is called after each chunk of n test images."""
    x, s = x.flatten(1).double(), samples.flatten(1).double().to(x.device)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64, device=x.device).reshape(-1)
    D, M = x.shape[1], s.shape[0]
    half_precision = (0.5 / sigmas**2)[:, None, None]  # [K, 1, 1]
    s_sq = s.pow(2).sum(1)
    out = []
    for xc in x.split(chunk_x):
        x_sq = xc.pow(2).sum(1)
        acc = torch.full((len(sigmas), len(xc)), -math.inf, dtype=torch.float64, device=x.device)
        for sc, sc_sq in zip(s.split(chunk_s), s_sq.split(chunk_s)):
            d2 = (x_sq[:, None] + sc_sq[None] - 2.0 * xc @ sc.T).clamp_min_(0.0)  # [n, m]
            acc = torch.logaddexp(acc, torch.logsumexp(-d2[None] * half_precision, dim=2))
        out.append(acc)
        if on_step is not None:
            on_step(len(xc))
    log_norm = D * torch.log(sigmas * math.sqrt(2 * math.pi))  # [K]
    return torch.cat(out, 1) - math.log(M) - log_norm[:, None]


def choose_sigma(val: torch.Tensor, samples: torch.Tensor, sigmas: torch.Tensor, **kwargs
                 ) -> tuple[float, torch.Tensor]:
    """The sigma with the best mean log-likelihood on the validation images, and that mean for every sigma
    (float64 [K] nats)."""
    mean_ll = parzen_log_likelihood(val, samples, sigmas, **kwargs).mean(1)
    return float(sigmas[int(mean_ll.argmax())]), mean_ll
