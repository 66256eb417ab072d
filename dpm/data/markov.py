"""Sequences of a first-order Markov chain over C classes, generated: categorical data whose log-likelihood is known
exactly, to set beside the bound K of categorical diffusion (docs/contracts.md, contract 9; docs/paper.md §12).

The chain: a transition matrix P [C, C] whose rows are drawn from a symmetric Dirichlet(concentration) (small
concentrations make each row peaked, the sequences predictable), the first class drawn from P's stationary
distribution, so every position has the same marginal. With iid=true every row of P is one and the same draw, so
the positions are independent draws from it. log p(x) = log pi0(x_1) + sum_l log P[x_{l-1}, x_l], exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from dpm.data.base import SPLITS, DataKind, DataModule
from dpm.ranges import count, real


def transition_matrix(n_classes: int, concentration: float, iid: bool, seed: int) -> np.ndarray:
    """P [C, C] float64, rows Dirichlet(concentration) from a generator seeded by `seed` (iid: one row repeated)."""
    rng = np.random.default_rng(seed)
    rows = rng.dirichlet(np.full(n_classes, concentration), size=1 if iid else n_classes)
    return np.repeat(rows, n_classes, 0) if iid else rows


def stationary(P: np.ndarray) -> np.ndarray:
    """pi with pi P = pi, sum 1: the eigenvector of P^T for its eigenvalue closest to 1. float64 [C]."""
    values, vectors = np.linalg.eig(P.T)
    v = np.abs(np.real(vectors[:, np.argmin(np.abs(values - 1))]))
    return v / v.sum()


def markov_log_likelihood(x: torch.Tensor, initial: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """log pi0(x_1) + sum_l log P[x_{l-1}, x_l] of sequences x [N, L] (class indices), nats float64 [N]."""
    x = x.long().cpu()
    log_P, log_pi = P.double().log(), initial.double().log()
    return log_pi[x[:, 0]] + log_P[x[:, :-1], x[:, 1:]].sum(1)


class MarkovDataModule(DataModule):
    """Markov-chain sequences [N, length] of classes 0..n_classes-1 (module docstring). The chain is drawn with the
    data set's seed, each split with its own (seed + 1, + 2, + 3), so a split does not change when another's size
    does. Not normalised: the classes stay classes."""

    name = "markov"

    def __init__(self, n_classes: int = 4, length: int = 20, concentration: float = 0.5, iid: bool = False,
                 n_train: int = 10000, n_val: int = 1000, n_test: int = 2000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_classes = count("dataset.n_classes", n_classes, 2)
        self.length = count("dataset.length", length, 2)
        concentration = real("dataset.concentration", concentration, 0, low_open=True,
                             why=" (the Dirichlet's concentration of each row of the transition matrix; small: peaked rows)")
        self.sizes = self.check_sizes(n_train=n_train, n_val=n_val, n_test=n_test)
        self.iid = bool(iid)
        P = transition_matrix(self.n_classes, float(concentration), self.iid, self.seed)
        self.P, self.initial = torch.from_numpy(P), torch.from_numpy(stationary(P))

    def describe(self) -> DataKind:
        return DataKind("sequence", "bits/seq", figure="sequence", classes=self.n_classes)

    def make_split(self, split: str) -> torch.Tensor:
        rng = np.random.default_rng(self.seed + 1 + SPLITS.index(split))
        n, cdf = self.sizes[split], np.cumsum(self.P.numpy(), 1)
        x = np.empty((n, self.length), dtype=np.int64)
        x[:, 0] = np.searchsorted(np.cumsum(self.initial.numpy()), rng.random(n), side="right")
        for pos in range(1, self.length):
            x[:, pos] = (rng.random(n)[:, None] >= cdf[x[:, pos - 1]]).sum(1)
        return torch.from_numpy(np.minimum(x, self.n_classes - 1)).float()  # rounding at the top of a cdf

    def fit_normalization(self, train: torch.Tensor) -> tuple[torch.Tensor, float]:
        return torch.zeros(()), 1.0  # classes stay classes

    def true_log_likelihood(self, x0: torch.Tensor) -> torch.Tensor:
        """The chain's exact log-likelihood of each sequence, nats float64 [N]."""
        return markov_log_likelihood(x0, self.initial, self.P)
