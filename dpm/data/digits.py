"""scikit-learn's bundled 8x8 handwritten digits: a real image data set that trains in minutes on a CPU."""

from __future__ import annotations

import numpy as np

from dpm.data.images import BundledImageDataModule


class DigitsDataModule(BundledImageDataModule):
    """sklearn.datasets.load_digits: 1797 grey images [1, 8, 8] with 17 levels (0..16), no download.

    The splits are disjoint parts of one permutation with seed `seed`: n_val, then n_test, then n_train
    (null: all the rest, 1197 by default). Dequantisation covers one of its 17 levels; the 8-bit NLL is not
    reported (nll_bits_per_dim gives the discrete NLL at 17 levels instead).
    """

    name = "digits"
    data_package = "scikit-learn"
    n_levels = 17
    location_keys = ()  # the images ship with scikit-learn: data_dir is not read

    def __init__(self, n_train: int | None = None, n_val: int = 200, n_test: int = 400, **kwargs) -> None:
        super().__init__(n_train, n_val, n_test, **kwargs)

    def load(self) -> np.ndarray:
        from sklearn.datasets import load_digits

        return load_digits().images.astype("uint8")[:, None]  # [1797, 1, 8, 8]
