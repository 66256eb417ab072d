"""CIFAR-10: 32x32 8-bit colour images (the paper's Table 1 row, trained with the released code)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from dpm.data.images import PooledImageDataModule, missing_files

FOLDER = "cifar-10-batches-py"
FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch (a dict of strings, lists and numpy arrays) and nothing else: a pickle can run
    arbitrary code, so only numpy's array reconstruction (and, for copies re-pickled by Python 3 with
    protocol 2, codecs.encode of a string) is allowed."""

    NUMPY = frozenset({"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"})

    def find_class(self, module: str, name: str):
        if (module.split(".")[0] == "numpy" and name in self.NUMPY) or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch file")


def read_batch(path: Path) -> np.ndarray:
    """One pickled CIFAR-10 batch (the python version's format: a dict with b"data", uint8 [N, 3072] rows of
    1024 red, 1024 green, 1024 blue values, each row-major 32x32) -> uint8 [N, 3, 32, 32]."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise ValueError(f"{path} is not a readable CIFAR-10 batch file ({type(err).__name__}: {err}); "
                         "replace it with the python version's file (cifar-10-python.tar.gz)") from None
    data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
    if data is None:
        raise ValueError(f"{path} is not a CIFAR-10 batch (no 'data' entry)")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: data has shape {data.shape}, expected [N, 3072]")
    return data.reshape(-1, 3, 32, 32)


class CIFAR10DataModule(PooledImageDataModule):
    """CIFAR-10 [3, 32, 32]. Files: data_dir/cifar-10-batches-py/{data_batch_1..5, test_batch} (the
    python version, torchvision's layout; data_dir itself is also searched). download=true fetches the
    archive with torchvision when they are missing (prepare_data, once per node).

    The batches are read here rather than through torchvision.datasets.CIFAR10, which refuses any copy whose
    md5 sums differ from the release (so a small copy in the same format could not be read).
    Splits: val is n_val of the 50,000 training images (a fixed-seed permutation with `seed`), train n_train
    of the rest (null: all 45,000 by default); test the first n_test (null: all) of the 10,000.
    """

    name = "cifar10"
    data_package = "torchvision"  # the published files, in the layout torchvision downloads
    n_levels = 256

    def __init__(self, download: bool = True, n_train: int | None = None, n_val: int = 5000,
                 n_test: int | None = None, **kwargs) -> None:
        super().__init__(download, n_train, n_val, n_test, **kwargs)

    def candidates(self) -> list[Path]:
        return [self.data_dir / FOLDER, self.data_dir]

    def find(self) -> Path | None:
        for folder in self.candidates():
            if all((folder / name).is_file() for names in FILES.values() for name in names):
                return folder
        return None

    def prepare_data(self) -> None:
        if not self.download or self.find() is not None:
            return
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(str(self.data_dir), train=True, download=True)
        except Exception as err:  # URLError, RuntimeError (md5), ...
            raise missing_files("CIFAR-10", self.candidates(), FILES["train"] + FILES["test"],
                                f"{type(err).__name__}: {err}") from err

    def pool(self, name: str) -> np.ndarray:
        folder = self.find()
        if folder is None:
            raise missing_files("CIFAR-10", self.candidates(), FILES["train"] + FILES["test"])
        return np.concatenate([read_batch(folder / f) for f in FILES[name]])
