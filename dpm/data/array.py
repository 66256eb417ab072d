"""A user's own array as a data set: `python train.py dataset=array dataset.path=FILE`.

FILE is .npy, .npz (one array, or arrays named train / val / test), .csv / .txt (numbers, an optional header row)
or .pt (a tensor, or a dict of train / val / test tensors, read with weights_only=True). Pickled objects are never
loaded. The shape says what the data are:
  [N, D] real vectors: Gaussian diffusion; standardised per coordinate (`scaling`: column, the default), by one
  global scalar (global, the paper's Swiss roll) or whitened (whiten);
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
from dpm.ranges import count

SUFFIXES = (".npy", ".npz", ".csv", ".txt", ".pt")
SCALINGS = ("column", "global", "whiten")  # how real vectors are scaled to unit variance (vector_scaling)
SHAPES = "[N, D] vectors, [N, L] 0/1 sequences, [N, H, W] or [N, C, H, W] images"
MAGIC = {".npy": (b"\x93NUMPY", "a NumPy array file", "numpy.save"),  # (first bytes, what has them, the writer)
         ".npz": (b"PK", "a NumPy archive (a zip file)", "numpy.savez")}
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model computes in float32
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
    if not path.is_file():  # a folder, or a FIFO / socket / device, which reading would wait on forever
        what = "a folder (for a folder of images use dataset=folder)" if path.is_dir() else "not a regular file"
        raise ConfigError(f"dataset.path={path} is {what}: give a file of numbers ({', '.join(SUFFIXES)})")
    with open(path, "rb") as f:
        head = f.read(6)
    if suffix in MAGIC and not head.startswith(MAGIC[suffix][0]):
        raise ConfigError(f"dataset.path={path} is not a {suffix} file (it does not start as {MAGIC[suffix][1]} "
                          f"does; its first bytes are {head!r}): save it with {MAGIC[suffix][2]}, or give the file "
                          "the suffix of what it holds")
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
    huge = np.abs(a) > FLOAT32_MAX
    if huge.any():
        first = tuple(int(i) for i in np.argwhere(huge)[0])
        raise ConfigError(f"{where} holds {int(huge.sum())} values beyond float32's range (±{FLOAT32_MAX:.3g}; the "
                          f"first, {a[first]:g}, at index {first}), in which the model computes: rescale the data")
    return a


def vector_scaling(train: torch.Tensor, scaling: str, where: str) -> tuple[torch.Tensor, torch.Tensor | float]:
    """(shift [D], S) from the raw training vectors [N, D] (float64 sums), for raw = x S^T + shift, i.e. the model
    sees x = S^-1 (raw - shift), of unit variance:

      column  S = diag(s), s [D] the per-column standard deviations (returned as the vector s);
      global  S = s I, s one scalar over all coordinates (the paper's Swiss roll; returned as a float);
      whiten  S = C^(1/2), C the covariance (symmetric, ZCA: each x_d stays closest to its own column) [D, D].

    log |det S| is what K_raw subtracts (raw_log2_jacobian). A constant column has no density in its own units
    (the bound would grow without limit), so it is refused, named, in every mode; so are linearly dependent
    columns under whiten."""
    x = train.double()
    shift = x.mean(0)
    centred = x - shift
    std = centred.pow(2).mean(0).sqrt()
    constant = [int(i) for i in torch.nonzero(std == 0).flatten()]
    if constant:
        value = float(x[0, constant[0]])
        raise ConfigError(f"{where}: column {constant[0]} (0-based) is constant on the training split (every value is "
                          f"{value:g}){f', and so are columns {constant[1:]}' if len(constant) > 1 else ''}: a constant "
                          "has no density, so no bound on it means anything. Drop the constant columns "
                          "(x[:, x.std(0) > 0]) and train on the rest")
    if scaling == "global":
        return shift, centred.pow(2).mean().sqrt().item()
    if scaling == "column":
        return shift, std
    cov = centred.T @ centred / len(x)
    eigenvalues, vectors = torch.linalg.eigh(cov)
    if eigenvalues[0] <= 1e-12 * eigenvalues[-1]:
        rank = int((eigenvalues > 1e-12 * eigenvalues[-1]).sum())
        raise ConfigError(f"{where}: the {len(eigenvalues)} columns are linearly dependent on the training split "
                          f"(their covariance has rank {rank}), so they cannot be whitened: use "
                          "dataset.scaling=column, or drop the redundant columns")
    return shift, (vectors * eigenvalues.sqrt()) @ vectors.T


class ArrayDataModule(DataModule):
    """Examples from one file (module docstring). Splits given in the file are used; missing ones are disjoint
    fixed-seed parts of the training array (n_val, then n_test, then n_train; null val / test: a tenth each).

    What the file holds fixes the data set's kind (describe): vectors, 0/1 sequences or images, or with n_classes
    (an integer C, or "auto" for the largest value + 1) integer classes 0..C-1 as sequences or images. Only images
    of real values are quantised pixels: n_levels (those images only) is their grey levels per channel (256 for
    8-bit; null: continuous values, not dequantised), dequantization the width of the noise over one level
    (dpm.data.images' dequantization_width, dequantize_images and nll_upper_bound, as for the built-in images);
    vectors, sequences and classes are never dequantised. scaling (real vectors only, SCALINGS): how they are brought
    to unit variance (vector_scaling); images keep one global mean and scale; 0/1 sequences and classes are not
    scaled.
    """

    name = "array"
    location_keys = ("path",)

    def __init__(self, path: str | None = None, n_train: int | None = None, n_val: int | None = None,
                 n_test: int | None = None, n_levels: int | None = None, dequantization: str = "bin",
                 scaling: str = "column", n_classes: int | str | None = None, batch_size: int = 256,
                 eval_batch_size: int = 1024, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)
        if dequantization not in DEQUANTIZATIONS:
            raise ValueError(f"dataset.dequantization={dequantization!r} is unknown; valid choices: "
                             f"{list(DEQUANTIZATIONS)}")
        self.dequantization = dequantization
        self.path = require_path(path, f"a file: {', '.join(SUFFIXES)} holding {SHAPES}",
                                 "python train.py dataset=array dataset.path=FILE (.npy, .npz, .csv, .txt or .pt)")
        self.n_levels = count("dataset.n_levels", n_levels, 2, allow=(None,), why=" (null: continuous values)")
        if scaling not in SCALINGS:
            raise ConfigError(f"dataset.scaling={scaling!r} is unknown; valid choices: {list(SCALINGS)} (column: each "
                              "coordinate to unit variance; global: one scalar for all, as the Swiss roll; whiten: "
                              "decorrelated too)")
        self.scaling = scaling
        count("dataset.n_classes", n_classes, 2, allow=(None, AUTO),
              why=f" (the number of classes), {AUTO} (the largest value + 1), or null for values that are not classes")
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

    def data_files(self) -> tuple[list[Path], Path | None]:
        return [self.path], None

    # ---- reading and checking the file ------------------------------------------------------------------
    def load(self) -> dict[str, torch.Tensor]:
        """The raw splits [N, *D] float32, read and checked once."""
        if self._raw is not None:
            return self._raw
        read = read_parts(self.path)
        integers = all(a.dtype.kind in "biu" for a in read.values())  # before check_values makes them float64
        parts = {k: check_values(self.path, k, a) for k, a in read.items()}
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
            if integers and self.n_levels is None:  # integer levels taken as continuous values: an unbounded K
                top = int(max(a.max() for a in parts.values()))
                raise ConfigError(f"dataset.path={self.path} holds images of integer values "
                                  f"({read['train'].dtype}, 0..{top}) and dataset.n_levels is null: set "
                                  f"dataset.n_levels={256 if top < 256 else top + 1} (their grey levels: dequantised "
                                  "over one level, K a bound on the discrete likelihood), or save the images as "
                                  "floats to model them as continuous values")
            self.data_kind = "image"
            parts = {k: self._image_values(k, a) for k, a in parts.items()}
        else:
            binary = all(np.isin(a, (0.0, 1.0)).all() for a in parts.values())
            if binary and np.ptp(parts["train"]) == 0:
                raise ConfigError(f"dataset.path={self.path}: the training examples are all the same (every value "
                                  f"{parts['train'].flat[0]:g}), so there is nothing to model")
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

    def fit_normalization(self, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        self.load()
        if self.data_kind == "sequence" or self.n_classes is not None:
            return torch.zeros(()), 1.0  # bits stay bits, classes stay classes
        if self.data_kind == "vectors":
            return vector_scaling(train, self.scaling, self.origin)
        return super().fit_normalization(train)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """x = S^-1 (raw - shift) (vector_scaling); a whitening S is a matrix, the other scalings divide."""
        if torch.is_tensor(self.scale) and self.scale.dim() == 2:
            return torch.linalg.solve(self.scale, (raw.double() - self.shift).T).T
        return super().normalize(raw)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """raw = x S^T + shift, on x's device and in its dtype."""
        if not torch.is_tensor(self.scale):
            return super().denormalize(x)
        scale, shift = self.scale.to(x.device, x.dtype), self.shift.to(x.device, x.dtype)
        return (x @ scale.T if scale.dim() == 2 else x * scale) + shift

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.load()
        if self.data_kind == "vectors" and not torch.is_tensor(self.scale):  # a checkpoint of the earlier default
            self.scaling = "global"

    @property
    def scaling_used(self) -> str | None:
        """The scaling of real vectors that the model sees (None for images and sequences)."""
        self.load()
        return self.scaling if self.data_kind == "vectors" else None

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
        """The file, what it was read as, and the normalisation in the file's units: x = S^-1 (file - shift), S a
        scalar (`scale` a number), diagonal (a list) or a whitening matrix (a list of rows), and `scaling`."""
        shift = (self.shift.double() * self.value_scale).tolist()
        scale = self.scale.double().tolist() if torch.is_tensor(self.scale) else self.scale * self.value_scale
        info = {"path": str(self.path), "data_kind": self.data_kind, "shift": shift, "scale": scale}
        if self.scaling_used is not None:
            info["scaling"] = self.scaling_used
        if self.n_classes is not None:
            info.update(n_classes=self.n_classes)
        elif self.data_kind == "image":
            info.update(n_levels=self.n_levels, dequantization=self.dequantization,
                        dequantization_width=self.kind.dequantization_width)
        return info

    def raw_log2_jacobian(self) -> float:
        """x_file = x S^T + shift_file: log2 |det S| per example (vectors: D log2 s for one scalar, sum_d log2 s_d
        per column, log2 det C^(1/2) whitened), per pixel for images (K is per spatial pixel there)."""
        if torch.is_tensor(self.scale):
            scale = self.scale.double()
            return (torch.linalg.slogdet(scale)[1] if scale.dim() == 2 else scale.log().sum()).item() / math.log(2)
        D = math.prod(self.data_shape)
        return D * math.log2(self.scale * self.value_scale) / self.kind.units_per_example
