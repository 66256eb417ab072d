"""MNIST through torchvision: 28x28 8-bit grey digits (the paper's Table 2 and Fig. App.1)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from dpm.data.images import PooledImageDataModule, missing_files

FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}


def read_idx_images(path: Path) -> np.ndarray:
    """An idx3-ubyte file (LeCun's MNIST format, raw or .gz): uint8 [N, rows, cols].

    Layout: magic 0x00000803 (two zero bytes, type 0x08 = uint8, 3 dimensions), then the three sizes as
    big-endian uint32, then the pixels row-major.
    """
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    if len(data) < 16 or data[:4] != b"\x00\x00\x08\x03":
        raise ValueError(f"{path} is not an idx3-ubyte image file (magic {data[:4].hex()}, expected 00000803)")
    n, rows, cols = struct.unpack(">III", data[4:16])
    if len(data) != 16 + n * rows * cols:
        raise ValueError(f"{path}: header says {n} x {rows} x {cols} pixels but holds {len(data) - 16} bytes")
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)


class MNISTDataModule(PooledImageDataModule):
    """MNIST [1, 28, 28]. Files: data_dir/MNIST/raw/{train,t10k}-images-idx3-ubyte[.gz] (torchvision's
    layout; data_dir/raw/ and data_dir/ itself are also searched). download=true fetches them with
    torchvision when they are missing (prepare_data, once per node).

    Splits: val is n_val images of the 60,000 training images (a fixed-seed permutation with `seed`), train
    n_train of the rest (null: all 50,000 by default); test the first n_test (null: all) of the 10,000.
    """

    name = "mnist"
    data_package = "torchvision"  # the published files, in the layout torchvision downloads
    n_levels = 256

    def __init__(self, download: bool = True, n_train: int | None = None, n_val: int = 10000,
                 n_test: int | None = None, **kwargs) -> None:
        super().__init__(download, n_train, n_val, n_test, **kwargs)

    def candidates(self) -> list[Path]:
        return [self.data_dir / "MNIST" / "raw", self.data_dir / "raw", self.data_dir]

    def find(self, pool: str) -> Path | None:
        for folder in self.candidates():
            for name in (FILES[pool], FILES[pool] + ".gz"):
                if (folder / name).is_file():
                    return folder / name
        return None

    def prepare_data(self) -> None:
        if not self.download or all(self.find(pool) for pool in FILES):
            return
        from torchvision.datasets import MNIST

        try:
            for train in (True, False):
                MNIST(str(self.data_dir), train=train, download=True)
        except Exception as err:  # URLError, RuntimeError from the mirrors, ...
            raise missing_files("MNIST", self.candidates(), [f + "[.gz]" for f in FILES.values()],
                                f"{type(err).__name__}: {err}") from err

    def pool(self, name: str) -> np.ndarray:
        path = self.find(name)
        if path is None:
            raise missing_files("MNIST", self.candidates(), [f + "[.gz]" for f in FILES.values()])
        return read_idx_images(path)[:, None]
