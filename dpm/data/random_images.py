"""Random 8-bit images of a given shape: the benchmark's stand-in for CIFAR-10's files (python -m dpm.bench)."""

from __future__ import annotations

import numpy as np
import torch

from dpm.data.images import ImageDataModule


class RandomImages(ImageDataModule):
    """Random 8-bit images of a given shape (CIFAR-10's by default): the cifar10 preset without its files."""

    name = "random_images"

    def __init__(self, shape: tuple[int, ...] = (3, 32, 32), n_train: int = 45000, n_val: int = 5000,
                 n_test: int = 10000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shape, self.sizes = tuple(shape), {"train": n_train, "val": n_val, "test": n_test}

    def make_split(self, split: str) -> torch.Tensor:
        g = np.random.default_rng(("train", "val", "test").index(split))
        return self.to_raw(g.integers(0, 256, (self.sizes[split], *self.shape), dtype=np.uint8))
