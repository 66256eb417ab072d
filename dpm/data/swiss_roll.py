"""The 2-D Swiss roll of the paper's Figure 1, generated on the fly."""

from __future__ import annotations

import torch
from sklearn.datasets import make_swiss_roll

from dpm.data.base import SPLITS, DataKind, DataModule
from dpm.core.truth import swiss_roll_log_likelihood
from dpm.ranges import real


class SwissRollDataModule(DataModule):
    """scikit-learn's make_swiss_roll(n, noise), columns 0 and 2; each split drawn with its own fixed seed
    (seed, seed + 1, seed + 2), so a split does not change when another's size does. Centred per column on
    the training split and divided by one global scalar, so the training data has unit variance per
    dimension on average (the paper does not say how its roll was made; docs/paper.md §7.1)."""

    name = "swiss_roll"
    data_package = "scikit-learn"  # make_swiss_roll draws the points

    def __init__(self, n_train: int = 10000, n_val: int = 2000, n_test: int = 10000, noise: float = 0.0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.noise = real("dataset.noise", noise, 0)
        self.sizes = self.check_sizes(n_train=n_train, n_val=n_val, n_test=n_test)

    def make_split(self, split: str) -> torch.Tensor:
        x, _ = make_swiss_roll(self.sizes[split], noise=self.noise, random_state=self.seed + SPLITS.index(split))
        return torch.from_numpy(x[:, [0, 2]]).float()

    def describe(self) -> DataKind:
        return DataKind("vectors", "bits", figure="points2d")  # K in bits per example, the paper's Figure 1

    def fit_normalization(self, train: torch.Tensor) -> tuple[torch.Tensor, float]:
        shift = train.mean(0)  # per column, then one scalar for both
        return shift, (train - shift).pow(2).mean().sqrt().item()

    def true_log_likelihood(self, x0: torch.Tensor) -> torch.Tensor | None:
        """With noise > 0: the roll's density by quadrature over its parameter (dpm.core.truth), with the normalisation's
        Jacobian, nats [N]. The noise-free roll lies on a curve and has no density: None."""
        if self.noise == 0:
            return None
        self.setup()
        return swiss_roll_log_likelihood(x0, self.noise, self.shift, self.scale)
