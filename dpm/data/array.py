"""A user's own array as a data set: `python train.py dataset=array dataset.path=FILE`.

FILE is .npy, .npz (one array, or arrays named train / val / test), .csv / .txt (numbers, an optional header row)
or .pt (a tensor, or a dict of train / val / test tensors, read with weights_only=True). Pickled objects are never
loaded. The shape says what the data are:
  [N, D] real vectors: Gaussian diffusion; per-coordinate mean removed, one global scalar scale (as the Swiss roll);
  [N, L] of 0 / 1: binary sequences, left as bits (as the heartbeat), so diffusion=binomial applies;
  [N, H, W] or [N, C, H, W]: images; with n_levels, integer levels 0..n_levels-1 (or values k / (n_levels - 1)),
  dequantised over one bin and reported in bits/pixel (nll_bits_per_dim_8bit at 256 levels), as the built-in images.
With n_classes (C, or auto: the largest value + 1) the values are integer classes 0..C-1 of any of these shapes,
kept as they are (no scaling, no dequantisation) for categorical diffusion: [N, L] sequences in bits/seq, [N, H, W] /
[N, C, H, W] class maps or quantised images in bits/pixel.
eval.json records the normalisation (shift, scale, in the file's units) and K_raw, the bound on the log-likelihood
of the values as the file holds them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from dpm.core.keyed import Keys
from dpm.data.base import SPLITS, DataKind, DataModule
from dpm.data.images import DEQUANTIZATIONS, carve_splits, dequantization_width, dequantize_images, nll_upper_bound
from dpm.errors import ConfigError

SUFFIXES = (".npy", ".npz", ".csv", ".txt", ".pt")
SHAPES = "[N, D] vectors, [N, L] 0/1 sequences, [N, H, W] or [N, C, H, W] images"
AUTO = "auto"  # dataset.n_classes=auto: the classes are 0..(the largest value)


def require_path(path: str | None, what: str, how: str) -> Path:
    """dataset.path as an existing Path, or the error that says what to give."""
    if path in (None, "", "???"):
        raise ConfigError(f"dataset.path is required: {how}")
    found = Path(str(path)).expanduser()
    if not found.exists():
        raise ConfigError(f"dataset.path={found} does not exist; give {what}")
    return found


def read_parts(path: Path) -> dict[str, np.ndarray]:
    """The arrays a file holds: {"train": a} for a single array, else its train / val / test arrays."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"dataset.path={path}: unknown file type {suffix!r}; give one of {list(SUFFIXES)}")
    try:
        if suffix == ".npy":
            return {"train": np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return named_parts(path, {k: z[k] for k in z.files})
        if suffix in (".csv", ".txt"):
            return {"train": read_text_table(path, "," if suffix == ".csv" else None)}
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except Exception as err:  # numpy / torch raise several types for pickled, truncated or foreign files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"dataset.path={path} could not be read as a {suffix} array ({type(err).__name__}: "
                          f"{first[:300]}). Pickled objects are never loaded: save plain numbers (numpy.save, "
                          "numpy.savez, torch.save of a tensor).") from None
    if torch.is_tensor(obj):
        return {"train": obj.numpy()}
    if isinstance(obj, dict) and all(torch.is_tensor(v) for v in obj.values()):
        return named_parts(path, {str(k): v.numpy() for k, v in obj.items()})
    raise ConfigError(f"dataset.path={path} holds a {type(obj).__name__}, not a tensor: save one tensor "
                      "(torch.save(x, path)) or a dict of tensors named train (and val, test)")


def named_parts(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A file of several arrays: exactly one, or `train` with optional `val` and `test` (nothing else)."""
    if len(arrays) == 1:
        return {"train": next(iter(arrays.values()))}
    if "train" in arrays and set(arrays) <= set(SPLITS):
        return arrays
    raise ConfigError(f"dataset.path={path} holds the arrays {sorted(arrays)}: give one array, or arrays named "
                      "train (and optionally val, test) and no others")


def read_text_table(path: Path, delimiter: str | None) -> np.ndarray:
    """A numeric table [N, D]; a first row that is not numbers is taken as a header."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    try:
        [float(v) for v in (first.split(delimiter) if first.strip() else ["x"])]
        header = 0
    except ValueError:
        header = 1
    try:
        return np.loadtxt(path, delimiter=delimiter, skiprows=header, ndmin=2, dtype=np.float64)
    except ValueError as err:
        raise ConfigError(f"dataset.path={path} is not a numeric table ({err}); give numbers only, with at most "
                          "one header row") from None


def check_values(path: Path, name: str, a: np.ndarray) -> np.ndarray:
    """One array of the file as float64, refused with a message naming the file when it cannot be data."""
    where = f"dataset.path={path}" + (f" (array {name!r})" if name != "train" else "")
    if a.dtype.kind not in "biuf":
        raise ConfigError(f"{where} holds a {a.dtype} array: give numbers (a float, int or bool array)")
    if a.ndim < 2 or a.ndim > 4:
        raise ConfigError(f"{where} has shape {tuple(a.shape)}: give {SHAPES}"
                          + (" (x.reshape(-1, 1) for one value per example)" if a.ndim == 1 else ""))
    a = a.astype(np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ConfigError(f"{where} holds {int(bad.sum())} NaN or infinite values (the first at index {first}): "
                          "remove or replace them")
    return a


class ArrayDataModule(DataModule):
    """Examples from one file (module docstring). Splits given in the file are used; missing ones are disjoint
    fixed-seed parts of the training array (n_val, then n_test, then n_train; null val / test: a tenth each).

    What the file holds fixes the data set's kind (describe): vectors, 0/1 sequences or images, or with n_classes
    (an integer C, or "auto" for the largest value + 1) integer classes 0..C-1 as sequences or images. Only images
    of real values are quantised pixels: n_levels (those images only) is their grey levels per channel (256 for
    8-bit; null: continuous values, not dequantised), dequantization the width of the noise over one level
    (dpm.data.images' dequantization_width, dequantize_images and nll_upper_bound, as for the built-in images);
    vectors, sequences and classes are never dequantised.
    """

    name = "array"
    location_keys = ("path",)

    def __init__(self, path: str | None = None, n_train: int | None = None, n_val: int | None = None,
                 n_test: int | None = None, n_levels: int | None = None, dequantization: str = "bin",
                 n_classes: int | str | None = None, batch_size: int = 256, eval_batch_size: int = 1024,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)
        if dequantization not in DEQUANTIZATIONS:
            raise ValueError(f"dataset.dequantization={dequantization!r} is unknown; valid choices: "
                             f"{list(DEQUANTIZATIONS)}")
        self.dequantization = dequantization
        self.path = require_path(path, f"a file: {', '.join(SUFFIXES)} holding {SHAPES}",
                                 "python train.py dataset=array dataset.path=FILE (.npy, .npz, .csv, .txt or .pt)")
        if n_levels is not None and int(n_levels) < 2:
            raise ConfigError(f"dataset.n_levels={n_levels} is invalid: give at least 2 levels, or null for "
                              "continuous values")
        self.n_levels = None if n_levels is None else int(n_levels)
        if n_classes is not None and n_classes != AUTO and (
                isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2):
            raise ConfigError(f"dataset.n_classes={n_classes!r} is invalid: the number of classes (an integer >= 2), "
                              f"{AUTO} (the largest value + 1), or null for values that are not classes")
        if n_classes is not None and n_levels is not None:
            raise ConfigError(f"dataset.n_classes={n_classes} and dataset.n_levels={n_levels} exclude each other: "
                              "classes are kept as they are; n_levels is for images of real values")
        self.n_classes = n_classes  # None, an int, or AUTO until the file is read (load)
        self.counts = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
        self.data_kind = ""  # "vectors", "sequence" or "image", from the file (load)
        self.value_scale = 1.0  # file value = value_scale x raw value (n_levels - 1 for integer levels, else 1)
        self._raw: dict[str, torch.Tensor] | None = None

    @property
    def origin(self) -> str:
        return f"dataset.path={self.path}"

    # ---- reading and checking the file ------------------------------------------------------------------
    def load(self) -> dict[str, torch.Tensor]:
        """The raw splits [N, *D] float32, read and checked once."""
        if self._raw is not None:
            return self._raw
        parts = {k: check_values(self.path, k, a) for k, a in read_parts(self.path).items()}
        shapes = {k: a.shape[1:] for k, a in parts.items()}
        if len(set(shapes.values())) > 1:
            raise ConfigError(f"dataset.path={self.path}: its arrays differ in example shape {shapes}; train, val "
                              "and test must share one")
        ndim = parts["train"].ndim
        if ndim == 3:  # [N, H, W]: one channel
            parts = {k: a[:, None] for k, a in parts.items()}
        if self.n_classes is not None:
            self.data_kind = "image" if ndim >= 3 else "sequence"
            self._check_classes(parts)
        elif ndim >= 3:
            self.data_kind = "image"
            parts = {k: self._image_values(k, a) for k, a in parts.items()}
        else:
            binary = all(np.isin(a, (0.0, 1.0)).all() for a in parts.values())
            self.data_kind = "sequence" if binary else "vectors"
            if self.n_levels is not None:
                raise ConfigError(f"dataset.n_levels={self.n_levels} applies to images; dataset.path={self.path} "
                                  f"holds {self.data_kind} of shape {tuple(parts['train'].shape)}: drop n_levels")
        tensors = {k: torch.from_numpy(a.astype(np.float32)) for k, a in parts.items()}
        self._raw = carve_splits(tensors, f"dataset.path={self.path}", self.seed, **self.counts)
        return self._raw

    def _check_classes(self, parts: dict[str, np.ndarray]) -> None:
        """Every value an integer class 0..C-1 (C = n_classes, or the largest value + 1 for auto), else refused."""
        if self.n_classes == AUTO:
            self.n_classes = max(2, int(max(a.max() for a in parts.values())) + 1)
        top = self.n_classes - 1
        for name, a in parts.items():
            bad = (a != np.round(a)) | (a < 0) | (a > top)
            if bad.any():
                where = f" (array {name!r})" if name != "train" else ""
                raise ConfigError(f"dataset.path={self.path}{where}: with dataset.n_classes={self.n_classes} every "
                                  f"value must be an integer class 0..{top}; {int(bad.sum())} are not, e.g. "
                                  f"{a[bad].ravel()[:3].tolist()}. Give the number of classes, or auto (the "
                                  "largest value + 1), or null for values that are not classes")

    def _image_values(self, name: str, a: np.ndarray) -> np.ndarray:
        """Image values as raw floats: integer levels k -> k / (n_levels - 1) in [0, 1] (as the built-in images),
        values already on that grid kept; continuous values (n_levels null) as they are, without dequantisation."""
        if self.n_levels is None:
            self.dequantization = "none"
            return a
        top = self.n_levels - 1
        if np.all(a == np.round(a)) and a.min() >= 0 and a.max() <= top and a.max() > 1:
            self.value_scale = float(top)
            return a / top
        if a.min() >= 0 and a.max() <= 1 and np.allclose(a * top, np.round(a * top), atol=1e-4):
            return a
        raise ConfigError(f"dataset.path={self.path} (array {name!r}): with dataset.n_levels={self.n_levels} the "
                          f"values must be integers 0..{top} or multiples of 1/{top} in [0, 1]; they range over "
                          f"[{a.min():g}, {a.max():g}]. Set n_levels to the data's levels, or null for continuous values")

    # ---- the DataModule contract ------------------------------------------------------------------------
    def make_split(self, split: str) -> torch.Tensor:
        return self.load()[split]

    def fit_normalization(self, train: torch.Tensor) -> tuple[torch.Tensor, float]:
        self.load()
        if self.data_kind == "sequence" or self.n_classes is not None:
            return torch.zeros(()), 1.0  # bits stay bits, classes stay classes
        if self.data_kind == "vectors":  # per coordinate mean, one scalar for all (as the Swiss roll)
            shift = train.double().mean(0)
            scale = (train.double() - shift).pow(2).mean().sqrt().item()
            if scale == 0:
                raise ConfigError(f"dataset.path={self.path}: the training examples are all the same, so they "
                                  "cannot be scaled to unit variance")
            return shift.float(), scale
        return super().fit_normalization(train)  # images: one global mean and scalar, as the built-in ones

    def describe(self) -> DataKind:
        """From the file: images as the built-in ones (bits per spatial pixel, dequantised over one level when
        n_levels is given); 0/1 sequences K in bits/seq; vectors K in bits per example."""
        self.load()
        if self.data_kind == "image":
            H, W = self.data_shape[-2:]
            return DataKind("image", "bits/pixel", H * W, self.dequantization_width, "image", self.n_classes)
        if self.data_kind == "sequence":
            return DataKind("sequence", "bits/seq", figure="sequence", classes=self.n_classes or 2)
        return DataKind("vectors", "bits", figure="points2d" if self.data_shape == (2,) else "pairs")

    # ---- images only: quantised pixels ------------------------------------------------------------------
    @property
    def bin_width(self) -> float:
        """One grey level in raw units, 1 / (n_levels - 1); 0 for continuous values and for anything but images."""
        return 1.0 / (self.n_levels - 1) if self.n_levels else 0.0

    @property
    def dequantization_width(self) -> float:
        """The width of the noise over one level, normalised (images with n_levels); 0 for anything else."""
        self.load()  # the file says what the data are
        if self.data_kind != "image" or not self.n_levels:
            return 0.0
        if self.scale is None:
            self.setup()
        return dequantization_width(self.dequantization, self.bin_width, self.scale)

    def dequantize(self, x0: torch.Tensor, keys: Keys | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        return dequantize_images(x0, self.kind.dequantization_width, keys, generator)

    def nll_bits_per_dim(self, K_bits_per_dim: float) -> float | None:
        if self.data_kind != "image" or self.n_levels is None:
            return None
        return nll_upper_bound(K_bits_per_dim, self.kind.dequantization_width, self.bin_width, self.scale)

    def nll_bits_per_dim_8bit(self, K_bits_per_dim: float) -> float | None:
        return self.nll_bits_per_dim(K_bits_per_dim) if self.n_levels == 256 else None

    def eval_info(self) -> dict:
        """The file, what it was read as, and the normalisation in the file's units: x = (file - shift) / scale."""
        shift = (self.shift.double() * self.value_scale).tolist()
        info = {"path": str(self.path), "data_kind": self.data_kind, "shift": shift,
                "scale": self.scale * self.value_scale}
        if self.n_classes is not None:
            info.update(n_classes=self.n_classes)
        elif self.data_kind == "image":
            info.update(n_levels=self.n_levels, dequantization=self.dequantization,
                        dequantization_width=self.kind.dequantization_width)
        return info

    def raw_log2_jacobian(self) -> float:
        """x_file = x * scale_file + shift_file elementwise: log2 |det| = D log2(scale_file) per example, per pixel
        for images (K is per spatial pixel there)."""
        D = math.prod(self.data_shape)
        return D * math.log2(self.scale * self.value_scale) / self.kind.units_per_example
