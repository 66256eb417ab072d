"""The obvious models to set beside the bound K: fitted on the training split, scored on the examples K was computed
on, in nats per example. A bound is only worth reading beside them (docs/contracts.md, contract 12).

- Real vectors x [N, D]: one Gaussian with a full covariance (maximum likelihood, plus `ridge` on the diagonal so
  that a rank-deficient training split still gives a density; scikit-learn's GaussianMixture adds the same).
- Sequences of C classes x [N, L] (0/1 bits: C = 2): independent positions (Bernoulli bits at C = 2), and a
  first-order Markov chain along the sequence (p(x_1) prod_l p(x_l | x_{l-1}), each position with its own
  transition probabilities: a sequence's positions are not exchangeable, e.g. the heartbeat's phase).
  Probabilities are Laplace-smoothed ((count + 1) / (n + C)) so that a class never seen in training keeps a
  finite log-likelihood.

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


def smoothed(counts: torch.Tensor, n: torch.Tensor | float, C: int) -> torch.Tensor:
    """Laplace's rule over C classes: P(k) = (count_k + 1) / (n + C), elementwise (C = 2: (ones + 1) / (n + 2))."""
    return (counts + 1.0) / (n + C)


def one_hot(x: torch.Tensor, C: int) -> torch.Tensor:
    """Integer classes x [N, L] (0..C-1, any float or integer dtype) as float64 one-hot [N, L, C]."""
    return torch.nn.functional.one_hot(x.flatten(1).round().long(), C).double()


def independent_fit(train: torch.Tensor, C: int = 2) -> torch.Tensor:
    """P(x_l = k) for each position l and class k, [L, C] float64, from classes train [N, L] (Laplace-smoothed;
    C = 2: independent Bernoulli bits)."""
    return smoothed(one_hot(train, C).sum(0), len(train), C)


def independent_log_prob(x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """log prod_l P(x_l) per example, nats float64 [N], for classes x [N, L] and probs [L, C] of independent_fit."""
    return (one_hot(x, probs.shape[-1]) * probs.log()).sum((1, 2))


def markov_fit(train: torch.Tensor, C: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A first-order Markov chain fitted to class sequences train [N, L] (L >= 2): (P(x_1 = k) [C], and
    P(x_l = k | x_{l-1} = s) [L - 1, C, C] indexed [l - 2, s, k] for l = 2..L), float64, Laplace-smoothed per
    context (each position its own transitions)."""
    h = one_hot(train, C)
    pairs = torch.einsum("nls,nlk->lsk", h[:, :-1], h[:, 1:])  # counts of (x_{l-1} = s, x_l = k)
    return smoothed(h[:, 0].sum(0), len(train), C), smoothed(pairs, pairs.sum(-1, keepdim=True), C)


def markov_log_prob(x: torch.Tensor, first: torch.Tensor, transitions: torch.Tensor) -> torch.Tensor:
    """log p(x_1) + sum_{l>=2} log p(x_l | x_{l-1}) per example, nats float64 [N], for classes x [N, L] and the fit
    of markov_fit."""
    h = one_hot(x, len(first))
    start = (h[:, 0] * first.log()).sum(1)
    steps = torch.einsum("nls,lsk,nlk->n", h[:, :-1], transitions.log(), h[:, 1:])
    return start + steps
