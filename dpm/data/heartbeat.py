"""The binary heartbeat of the paper's section 7.1: a 1 every `period`-th bin of a `length`-bin sequence, at a
uniformly random phase (docs/paper.md §7.1). With the defaults (20, 5) there are 5 equiprobable sequences, each with
mean activity 1/5, and the true log-likelihood is log2(1/5) = -2.322 bits/seq."""

from __future__ import annotations

import math

import torch

from dpm.data.base import SPLITS, DataKind, DataModule
from dpm.core.truth import heartbeat_log_likelihood
from dpm.ranges import count


def heartbeat_patterns(length: int = 20, period: int = 5) -> torch.Tensor:
    """The `period` possible sequences, row k having its 1s at bins k, k + period, ...: float32 [period, length]."""
    bins = torch.arange(length)
    return ((bins[None, :] - torch.arange(period)[:, None]) % period == 0).float()


def true_log2_likelihood(period: int = 5) -> float:
    """log2 p(x0) of every heartbeat sequence, bits/seq: the phase is the only randomness."""
    return -math.log2(period)


def pattern_index(x: torch.Tensor, length: int = 20, period: int = 5) -> torch.Tensor:
    """For binary sequences x [N, length]: the phase k of the pattern each row equals, or -1 if none. long [N]."""
    match = (x[:, None, :] == heartbeat_patterns(length, period).to(x)[None]).all(dim=2)  # [N, period]
    return torch.where(match.any(dim=1), match.float().argmax(dim=1), torch.full_like(match[:, 0], -1, dtype=torch.long))


class HeartbeatDataModule(DataModule):
    """Heartbeat sequences [N, length] in {0, 1}, phase uniform over 0..period-1, each split drawn with its own
    fixed seed (seed, seed + 1, seed + 2). Not normalised: binomial diffusion models the bits themselves
    (Table 1's caption: every data set except the heartbeat is scaled to unit variance)."""

    name = "heartbeat"

    def __init__(self, n_train: int = 10000, n_val: int = 1000, n_test: int = 2000, length: int = 20,
                 period: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        period, length = count("dataset.period", period, 1), count("dataset.length", length, 1)
        if length % period != 0:
            raise ValueError(f"dataset.length={length}, dataset.period={period} are invalid: length must be a "
                             "positive multiple of period (so every phase has the same mean activity 1/period)")
        self.sizes = self.check_sizes(n_train=n_train, n_val=n_val, n_test=n_test)
        self.length, self.period = int(length), int(period)

    @property
    def patterns(self) -> torch.Tensor:
        """The `period` sequences the data is made of, float32 [period, length]."""
        return heartbeat_patterns(self.length, self.period)

    def describe(self) -> DataKind:
        return DataKind("sequence", "bits/seq", figure="sequence", classes=2)  # bits, K per sequence (Table 1)

    def make_split(self, split: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + SPLITS.index(split))
        phase = torch.randint(self.period, (self.sizes[split],), generator=g)
        return self.patterns[phase]

    def fit_normalization(self, train: torch.Tensor) -> tuple[torch.Tensor, float]:
        return torch.zeros(()), 1.0  # the identity: bits stay bits

    def true_log_likelihood(self, x0: torch.Tensor) -> torch.Tensor:
        """log(1/period) nats for each sequence [N] that is one of the patterns, -inf for any other."""
        return heartbeat_log_likelihood(pattern_index(x0.cpu(), self.length, self.period) >= 0, self.period)
