"""The obvious models to set beside the bound K: fitted on the training split, scored on the examples K was computed
on, in nats per example. A bound is only worth reading beside them (docs/contracts.md, contract 12).

- Real vectors x [N, D]: one Gaussian with a full covariance (maximum likelihood, plus `ridge` on the diagonal so
  that a rank-deficient training split still gives a density; scikit-learn's GaussianMixture adds the same).
- 0/1 sequences x [N, L]: independent Bernoulli bits, and a first-order Markov chain along the sequence
  (p(x_1) prod_l p(x_l | x_{l-1}), each position with its own transition probabilities: a sequence's positions are
  not exchangeable, e.g. the heartbeat's phase). Probabilities are Laplace-smoothed ((count + 1) / (n + 2)) so
  that a bit value never seen in training keeps a finite log-likelihood.

The Gaussian mixture with its number of components chosen on validation data needs scikit-learn and lives with
the task that reports them (dpm.tasks.baselines).
"""

from __future__ import annotations

import torch

RIDGE = 1e-6  # scikit-learn GaussianMixture's default reg_covar, in the units the model sees (unit variance)


def gaussian_fit(train: torch.Tensor, ridge: float = RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], covariance [D, D]) of train [N, D]: the maximum-likelihood Gaussian (covariance divided by N),
    float64, with `ridge` added to the covariance's diagonal."""
    x = train.double().flatten(1)
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / len(x)
    return mean, cov + ridge * torch.eye(len(mean), dtype=cov.dtype)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, cov) per example, nats float64 [N], for x [N, D]."""
    dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    return dist.log_prob(x.double().flatten(1))


def smoothed(ones: torch.Tensor, n: torch.Tensor | float) -> torch.Tensor:
    """Laplace's rule: P(1) = (ones + 1) / (n + 2), elementwise."""
    return (ones + 1.0) / (n + 2.0)


def bernoulli_fit(train: torch.Tensor) -> torch.Tensor:
    """P(x_l = 1) for each position l, [L] float64, from 0/1 train [N, L] (Laplace-smoothed)."""
    x = train.double().flatten(1)
    return smoothed(x.sum(0), len(x))


def bernoulli_log_prob(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """log prod_l B(x_l; p_l) per example, nats float64 [N], for 0/1 x [N, L] and p [L]."""
    x = x.double().flatten(1)
    return (x * p.log() + (1 - x) * torch.log1p(-p)).sum(1)


def markov_fit(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A first-order Markov chain fitted to 0/1 sequences train [N, L] (L >= 2): (P(x_1 = 1) [], and
    P(x_l = 1 | x_{l-1} = s) [L - 1, 2] for l = 2..L and s = 0, 1), float64, Laplace-smoothed per context."""
    x = train.double().flatten(1)
    prev, nxt = x[:, :-1], x[:, 1:]
    given1 = smoothed((prev * nxt).sum(0), prev.sum(0))
    given0 = smoothed(((1 - prev) * nxt).sum(0), (1 - prev).sum(0))
    return smoothed(x[:, 0].sum(), len(x)), torch.stack([given0, given1], 1)


def markov_log_prob(x: torch.Tensor, first: torch.Tensor, transitions: torch.Tensor) -> torch.Tensor:
    """log p(x_1) + sum_{l>=2} log p(x_l | x_{l-1}) per example, nats float64 [N], for 0/1 x [N, L] and the fit of
    markov_fit."""
    x = x.double().flatten(1)
    start = x[:, 0] * first.log() + (1 - x[:, 0]) * torch.log1p(-first)
    prev, nxt = x[:, :-1], x[:, 1:]
    p1 = prev * transitions[:, 1] + (1 - prev) * transitions[:, 0]  # P(x_l = 1 | x_{l-1}) [N, L - 1]
    return start + (nxt * p1.log() + (1 - nxt) * torch.log1p(-p1)).sum(1)
