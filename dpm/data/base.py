"""The base every data set's LightningDataModule shares: fixed-seed splits held as tensors, the global batch
split across devices, a normalisation fitted on the training split and kept in the checkpoint, and the one record of
what kind of data a set holds (DataKind), which the tasks, the figures, the bound and the training step read."""

from __future__ import annotations

import math
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from dataclasses import dataclass

import torch
import lightning as L
from torch.utils.data import DataLoader

from dpm.data.loaders import BatchTensorDataset, EpochBatches, ResumableLoader, ShardBatches, as_batch
from dpm.core.keyed import Keys
from dpm.errors import ConfigError
from dpm.io.files import content_sha256
from dpm.ranges import count

SPLITS = ("train", "val", "test")
DATA = ("vectors", "sequence", "image")


@dataclass(frozen=True)
class DataKind:
    """What a data set holds, fixed once (DataModule.describe, after setup) and read by everything that needs to know:
    the tasks (which apply), the figures (which one draws it), the bound (its unit) and the training step (its
    dequantisation).

    data: "vectors" [N, D], "sequence" [N, L] (positions in order, each a discrete state) or "image" [N, C, H, W];
    unit: K's reporting unit, "bits" (per example), "bits/seq" or "bits/pixel" (per spatial pixel, docs/paper.md
    §3.4); units_per_example: how many of that unit one example holds (H x W for bits/pixel, else 1);
    dequantization_width: the width w of the uniform noise U(-w/2, w/2) added to each value before the bound (0: none);
    figure: the dpm.figures function that draws it ("points2d", "pairs", "sequence", "image");
    classes: C where every value is an integer class 0..C-1 (bits: 2), None for real values."""

    data: str
    unit: str
    units_per_example: int = 1
    dequantization_width: float = 0.0
    figure: str = ""
    classes: int | None = None

    def __post_init__(self) -> None:
        if self.data not in DATA:
            raise ValueError(f"DataKind.data={self.data!r} is unknown; valid choices: {list(DATA)}")
        if not self.unit or not self.figure or self.units_per_example < 1 or self.dequantization_width < 0:
            raise ValueError(f"{self} is incomplete: it needs a unit, a figure, units_per_example >= 1 and a "
                             "dequantization_width >= 0")
        if self.classes is not None and self.classes < 2:
            raise ValueError(f"DataKind.classes={self.classes} is invalid: at least 2 classes, or None for real values")


def package_version(name: str) -> str:
    """The installed version of a package (its distribution's metadata), or "unknown"."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


class DataModule(L.LightningDataModule):
    """Subclasses set `name`, implement `make_split` and say what their data are once, in `describe` (a DataKind);
    images also override `dequantize`.

    batch_size is the global batch: with N devices each gets batch_size // N (README, docs/contracts.md, contract 5).
    """

    name = ""
    # Shortcuts an own data set may set instead of describe() (which the default describe reads): K's unit, and the
    # dpm.figures function that draws it ("" chooses from the data's shape)
    unit = "bits"
    figure_kind = ""
    location_keys: tuple[str, ...] = ()  # settings that say where the data live, not what they are: a resumed run may change them
    data_package = "dpm"  # whose version identifies built-in data: dpm (generated here), or the package that ships it
    patterns: torch.Tensor | None = None  # the finite set of examples the data are drawn from, where known [P, *D]

    def __init__(self, batch_size: int = 256, eval_batch_size: int = 1000, num_workers: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        self.batch_size = count("dataset.batch_size", batch_size, 1)
        self.eval_batch_size = count("dataset.eval_batch_size", eval_batch_size, 1)
        self.num_workers, self.seed = count("dataset.num_workers", num_workers, 0), count("dataset.seed", seed, 0)
        self.splits: dict[str, torch.Tensor] = {}
        self.device_splits: dict[str, torch.Tensor] = {}  # training data kept on the GPU (_to_training_device)
        self.shift: torch.Tensor | None = None  # x <- (x - shift) / scale, fitted on the training split
        self.scale: float | None = None
        self._identity: dict | None = None
        self.trained_on: dict | None = None  # from a checkpoint: the data's identity and example shape at training
        self._kind: DataKind | None = None

    # ---- what a data set defines ---------------------------------------------------------------------
    def make_split(self, split: str) -> torch.Tensor:
        """The raw (unnormalised) examples of one split, float32 [N, *D], the same on every call."""
        raise NotImplementedError

    def fit_normalization(self, train: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(shift, scale) from the raw training split [N, *D]: by default one global mean and one global scalar
        std, so the data has zero mean and unit variance (docs/paper.md §5.5, on the whole split rather than one
        minibatch), summed in float64 in chunks so large sets stay exact. shift broadcasts against [*D]."""
        n = train.numel()
        mean = sum(chunk.double().sum().item() for chunk in train.split(4096)) / n
        std = math.sqrt(sum((chunk.double() - mean).pow(2).sum().item() for chunk in train.split(4096)) / n)
        if std == 0:
            raise ValueError(f"dataset {self.name}: the training split is constant, so it cannot be scaled to "
                             "unit variance")
        return torch.tensor(mean, dtype=torch.float32), std

    @staticmethod
    def check_sizes(**sizes: int) -> dict[str, int]:
        """{"train": n_train, ...} from the split sizes a config gives as n_train=..., each at least 2."""
        return {key.removeprefix("n_"): count(f"dataset.{key}", value, 2, why=" (a split needs at least 2 examples)")
                for key, value in sizes.items()}

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.shift) / self.scale

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised x -> raw units y = x * scale + shift (not clamped)."""
        shift = self.shift.to(x.device) if torch.is_tensor(self.shift) else self.shift
        return x * self.scale + shift

    def dequantize(self, x0: torch.Tensor, keys: Keys | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise added to each batch on the device before the bound (images: one quantisation bin): from
        `generator` (default: the device's global one), or keyed by each example's (seed, index) with keys
        (dpm.core.keyed.Keys), the same in any batch."""
        return x0

    def nll_bits_per_dim_8bit(self, K_bits_per_dim: float) -> float | None:
        """The modern discrete convention for 8-bit data (images override), else None."""
        return None

    def true_log_likelihood(self, x0: torch.Tensor) -> torch.Tensor | None:
        """log q(x0) of the data-generating density per example, nats float64 [N], on the data as the model sees it
        (after normalisation, so the log-Jacobian of the scaling is included); None where the density is unknown.
        eval.json sets K beside it (docs/contracts.md, contract 9)."""
        return None

    def eval_info(self) -> dict:
        """Extra facts about the data that eval.json records beside the numbers (images: the dequantisation)."""
        return {}

    def raw_log2_jacobian(self) -> float | None:
        """log2 |det d x_raw / d x| per reporting unit, for the map from the normalised data x the model sees back to
        the data as the user gave them, or None where no K_raw is reported (the built-in sets, whose raw units are
        the paper's). eval.json's K_raw = K - this: log p_raw(x_raw) = log p(x) - log |det d x_raw / d x|."""
        return None

    def describe(self) -> DataKind:
        """What this data set holds (DataKind), called once after setup. By default from the training split's shape
        and values: [N, C, H, W] "image"; [N, L] of 0 / 1 "sequence" of bits (classes 2); any other "vectors" (figure
        "points2d" for [N, 2], else "pairs"); with the class's `unit` and `figure_kind` shortcuts, one unit per
        example and no dequantisation. A data set that knows what it holds overrides this."""
        shape, train = self.data_shape, self.splits["train"]
        binary = len(shape) == 1 and bool(((train == 0) | (train == 1)).all())
        data = "image" if len(shape) == 3 else "sequence" if binary else "vectors"
        figure = self.figure_kind or {"image": "image", "sequence": "sequence"}.get(
            data, "points2d" if shape == (2,) else "pairs")
        return DataKind(data, self.unit, figure=figure, classes=2 if binary else None)

    @property
    def kind(self) -> DataKind:
        """The data set's DataKind (describe), fixed once after setup."""
        if self._kind is None:
            self.setup()
            self._kind = self.describe()
        return self._kind

    def data_files(self) -> tuple[list[Path], Path | None]:
        """The user's files the examples are read from (a file, or the files of a folder and that folder), for the
        data's content hash; ([], None) for data generated here or shipped with a package."""
        return [], None

    def identity(self) -> dict:
        """What the examples are, for a result's provenance: a user's file or folder by the sha256 of its contents
        (dpm.io.files.content_sha256), a built-in set by its name and the version of the package it comes from.
        Computed once (the data are read once)."""
        if self._identity is None:
            files, root = self.data_files()
            if files:
                self._identity = {"name": self.name, "sha256": content_sha256(files, root), "files": len(files)}
            else:
                self._identity = {"name": self.name, "version": f"{self.data_package} {package_version(self.data_package)}"}
        return self._identity

    @property
    def origin(self) -> str:
        """Where the examples come from, as an error message names it (a user's file: dataset.path=...)."""
        return f"dataset {self.name or type(self).__name__}"

    # ---- Lightning hooks -----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        raw = {split: self.make_split(split) for split in SPLITS}
        shape = (self.trained_on or {}).get("example_shape")
        if shape is not None and tuple(raw["train"].shape[1:]) != tuple(shape):
            raise ConfigError(f"{self.origin} holds examples of shape {tuple(raw['train'].shape[1:])}, but the model was "
                              f"trained on examples of shape {tuple(shape)}: give it the data it was trained on (or data "
                              "of that shape)")
        if self.scale is None:
            self.shift, self.scale = self.fit_normalization(raw["train"])
        # contiguous: a batch is one index_select, several times slower on a strided tensor (the Swiss roll's was)
        self.splits = {split: self.normalize(x).float().contiguous() for split, x in raw.items()}

    @property
    def data_shape(self) -> tuple[int, ...]:
        self.setup()
        return tuple(self.splits["train"].shape[1:])

    def state_dict(self) -> dict:
        """The normalisation, and what the data were (identity, example shape), kept in every checkpoint so that an
        evaluation can tell whether it is given the same data."""
        return {"shift": self.shift, "scale": self.scale,
                "trained_on": {"identity": self.identity(), "example_shape": list(self.data_shape)}}

    def load_state_dict(self, state: dict) -> None:
        self.shift, self.scale = state["shift"], state["scale"]
        self.trained_on = state.get("trained_on")  # None from checkpoints written before it was kept
        self.splits, self.device_splits, self._kind = {}, {}, None

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def loader(self, split: str, batch_size: int | None = None, shuffle: bool = False, rank: int | None = None,
               world: int | None = None) -> DataLoader:
        """Batches (x0 [B, *D], index [B]) of this process's share of a split: the example indices key the
        evaluation's random draws (dpm.core.keyed). The loaders shard themselves (the Trainer runs with
        use_distributed_sampler=False); batch_size is global, each of `world` processes gets batch_size // world."""
        self.setup()
        if rank is None or world is None:
            rank, world = self._rank_and_world()
        per_device = max(1, (batch_size or self.eval_batch_size) // world)
        data = self.device_splits.get(split, self.splits[split]) if shuffle else self.splits[split]
        n = len(data)
        batches = (EpochBatches(n, per_device, self.seed, rank, world, device=data.device) if shuffle
                   else ShardBatches(n, per_device, rank, world))
        settings = dict(batch_sampler=batches, collate_fn=as_batch,
                        # its own generator for worker seeds: iterating never draws from torch's global RNG
                        generator=torch.Generator().manual_seed(self.seed),
                        num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                        pin_memory=torch.cuda.is_available() and data.device.type == "cpu")
        dataset = BatchTensorDataset(data, torch.arange(n, device=data.device))
        if shuffle:
            return ResumableLoader(dataset, batches_done=self._batches_done, **settings)
        return DataLoader(dataset, **settings)

    def _batches_done(self) -> int:
        """Training batches of the current epoch done so far (the trainer's own count; 0 outside a fit)."""
        trainer = getattr(self, "trainer", None)
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        self._to_training_device()
        return self.loader("train", self.batch_size, shuffle=True)

    def _to_training_device(self, max_fraction: float = 0.25) -> None:
        """Keep the training split on the GPU when it fits in a quarter of the free memory (CIFAR-10's 600 MB
        does): batches are then indexed there, with no copy per step. Otherwise loaders pin it in host memory."""
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        self.setup()
        data = self.splits["train"]
        if device.type != "cuda" or "train" in self.device_splits or self.num_workers > 0:
            return
        free, _ = torch.cuda.mem_get_info(device)
        if data.numel() * data.element_size() < max_fraction * free:
            self.device_splits["train"] = data.to(device)  # splits stay on the CPU for figures and evaluation

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
