"""A user's own folder of images as a data set: `python train.py dataset=folder dataset.path=DIR`.

PNG, JPEG, BMP and TIFF files are found recursively; train/, val/ and test/ subfolders are used as the splits when
DIR has a train/ (a missing val/ or test/ is carved from train/). Images are decoded once, converted to
`channels` (1: grey, 3: RGB; null: what the files are, which must agree), centre-cropped and resized to
`image_size` (null: the files' own size, which must agree) with PIL, and kept as one uint8 tensor, so an epoch
costs what the built-in sets cost. 8-bit levels: dequantised over one bin, K in bits/pixel beside
nll_bits_per_dim_8bit.
"""

from __future__ import annotations

import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from dpm.data.array import require_path
from dpm.data.base import SPLITS
from dpm.data.images import ImageDataModule, carve_splits
from dpm.errors import ConfigError
from dpm.io.memory import available_bytes
from dpm.io.progress import Progress
from dpm.ranges import count

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GREY_MODES = ("1", "L", "LA", "La")
ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")
COLOUR_MODES = ("RGB", "RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


def image_files(folder: Path) -> list[Path]:
    """Every image file under folder, recursively, sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def _unreadable(path: Path, err: Exception) -> ConfigError:
    return ConfigError(f"{path} (under dataset.path) is not a readable image ({type(err).__name__}: {err}); remove "
                       "or replace it")


def headers(paths: list[Path]) -> list[tuple[str, tuple[int, int]]]:
    """(mode, (width, height)) of each file, from its header alone."""
    from PIL import Image

    out = []
    for path in paths:
        try:
            with Image.open(path) as im:
                out.append((im.mode, im.size))
        except Image.DecompressionBombError as err:  # a header that claims more pixels than PIL will decode
            raise ConfigError(f"{path} (under dataset.path) is too large to decode ({err}); remove it, or shrink it "
                              "(dpm models small images: dataset.image_size resizes every image once decoded)") from None
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for foreign or damaged files
            raise _unreadable(path, err) from None
    return out


BYTES_PER_VALUE = 14  # peak bytes held per decoded pixel value: uint8 images and their stack, float32 raw splits,
# the carved splits and the normalised copy (FolderDataModule.load, then DataModule.setup)


def check_memory(folder: Path, n: int, shape: tuple[int, int, int]) -> None:
    """Refuse, before decoding, a folder whose images [n, C, H, W] would not fit in the memory available."""
    need, have = BYTES_PER_VALUE * n * math.prod(shape), available_bytes()
    if need > have:
        raise ConfigError(f"dataset.path={folder}: its {n:,} images of {'x'.join(map(str, shape))} would need about "
                          f"{need / 2**30:,.1f} GiB of memory once decoded, more than the {have / 2**30:,.1f} GiB "
                          "available here: set dataset.image_size smaller, or use fewer images")


def decode(path: Path, mode: str, image_size: int | None) -> np.ndarray:
    """One image as uint8 [C, H, W] in `mode` ("L" or "RGB"), centre-cropped to a square and resized to
    image_size x image_size (PIL's ImageOps.fit, bicubic) when it is given."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if image_size is not None:
                im = ImageOps.fit(im, (image_size, image_size), method=Image.Resampling.BICUBIC)
            a = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:  # a truncated file fails here, at decoding
        raise _unreadable(path, err) from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode_all(paths: list[Path], mode: str, image_size: int | None, progress: bool = True) -> np.ndarray:
    """uint8 [N, C, H, W] of every file, decoded by a few threads (PIL releases the GIL while decoding)."""
    with Progress(len(paths), "decoding images", unit="image", enabled=progress) as bar, \
            ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = []
        try:
            for a in pool.map(lambda p: decode(p, mode, image_size), paths, chunksize=64):
                images.append(a)
                bar.update(1)
            return np.stack(images)
        except MemoryError:  # more than check_memory foresaw (other processes took memory meanwhile)
            raise ConfigError(f"decoding {len(paths):,} images ran out of memory after {len(images):,} (the last "
                              f"{paths[max(0, len(images) - 1)]}): set dataset.image_size smaller, or use fewer "
                              "images") from None


class FolderDataModule(ImageDataModule):
    """8-bit images [channels, H, W] from the files under `path` (module docstring). Without train/ val/ test/
    subfolders, val and test are disjoint fixed-seed parts of all the images (n_val, then n_test, then n_train;
    null val / test: a tenth each, null n_train: all the rest)."""

    name = "folder"
    n_levels = 256
    location_keys = ("path",)

    def __init__(self, path: str | None = None, channels: int | None = None, image_size: int | None = None,
                 n_train: int | None = None, n_val: int | None = None, n_test: int | None = None,
                 dequantization: str = "bin", batch_size: int = 256, eval_batch_size: int = 1024,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(data_dir=".", dequantization=dequantization, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)
        self.path = require_path(path, f"a folder of images ({', '.join(SUFFIXES)})",
                                 "python train.py dataset=folder dataset.path=DIR (a folder of images)")
        if not self.path.is_dir():
            raise ConfigError(f"dataset.path={self.path} is not a folder: give a folder of images (for an array "
                              "file use dataset=array)")
        if channels not in (None, 1, 3):
            raise ConfigError(f"dataset.channels={channels} is invalid: 1 (grey), 3 (RGB) or null (as the files are)")
        self.channels = channels
        self.image_size = count("dataset.image_size", image_size, 1, allow=(None,), why=" (null: the files' own size)")
        self.counts = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
        self._raw: dict[str, torch.Tensor] | None = None

    @property
    def origin(self) -> str:
        return f"dataset.path={self.path}"

    def split_files(self) -> dict[str, list[Path]]:
        """{"train": files, ...}: the train/ val/ test/ subfolders when there is a train/, else all as "train"."""
        if (self.path / "train").is_dir():
            found = {s: image_files(self.path / s) for s in SPLITS if (self.path / s).is_dir()}
        else:
            found = {"train": image_files(self.path)}
        for split, files in found.items():
            if not files:
                folder = self.path / split if (self.path / "train").is_dir() else self.path
                others = sorted(p.name for p in folder.rglob("*") if p.is_file())[:3]
                what = f"no image files, only {others}" if others else "nothing"
                raise ConfigError(f"dataset.path={folder} holds {what}: give a folder with {', '.join(SUFFIXES)} "
                                  "images (in train/ val/ test/ subfolders, or all together)")
        return found

    def data_files(self) -> tuple[list[Path], Path | None]:
        return [p for files in self.split_files().values() for p in files], self.path

    def mode(self, files: list[Path], info: list[tuple[str, tuple[int, int]]]) -> str:
        """"L" or "RGB": from `channels`, else what every file is (grey and colour mixed is refused)."""
        for path, (mode, _) in zip(files, info):
            if mode not in GREY_MODES + COLOUR_MODES:
                raise ConfigError(f"{path} is a {mode!r} image (16-bit or floating point): only 8-bit grey or "
                                  "colour images are read; convert it to 8 bits")
        if self.channels is not None:
            return "L" if self.channels == 1 else "RGB"
        grey = [p for p, (m, _) in zip(files, info) if m in GREY_MODES]
        colour = [p for p, (m, _) in zip(files, info) if m not in GREY_MODES]
        if grey and colour:
            raise ConfigError(f"dataset.path={self.path} mixes grey images ({len(grey)}, e.g. {grey[0]}) and colour "
                              f"images ({len(colour)}, e.g. {colour[0]}): set dataset.channels=1 (all grey) or "
                              "dataset.channels=3 (all RGB)")
        return "L" if grey else "RGB"

    def load(self) -> dict[str, torch.Tensor]:
        """The raw splits [N, C, H, W] float32 in [0, 1], decoded once."""
        if self._raw is not None:
            return self._raw
        found = self.split_files()
        files = [p for split in found.values() for p in split]
        info = headers(files)
        mode = self.mode(files, info)
        sizes = {}
        for path, (_, size) in zip(files, info):
            sizes.setdefault(size, path)
        if len(sizes) > 1 and self.image_size is None:
            shown = ", ".join(f"{p} is {w}x{h}" for (w, h), p in list(sizes.items())[:3])
            raise ConfigError(f"dataset.path={self.path} holds images of {len(sizes)} sizes ({shown}): set "
                              "dataset.image_size=N to centre-crop and resize every image to N x N")
        w, h = next(iter(sizes)) if self.image_size is None else (self.image_size, self.image_size)
        check_memory(self.path, len(files), (1 if mode == "L" else 3, h, w))
        alpha = [(p, m) for p, (m, _) in zip(files, info) if m in ALPHA_MODES]
        if alpha:  # said once: the model's channels hold no transparency
            print(f"note: {len(alpha)} of the {len(files)} images under dataset.path={self.path} have an alpha "
                  f"channel (e.g. {alpha[0][0]}, mode {alpha[0][1]}); it is dropped ({'grey' if mode == 'L' else 'RGB'}"
                  " is read), so transparent pixels count with the colour stored under them", file=sys.stderr)
        levels = decode_all(files, mode, self.image_size)
        parts, start = {}, 0
        for split, split_files in found.items():
            parts[split] = self.to_raw(levels[start:start + len(split_files)])
            start += len(split_files)
        self._raw = carve_splits(parts, f"dataset.path={self.path}", self.seed, **self.counts)
        return self._raw

    def make_split(self, split: str) -> torch.Tensor:
        return self.load()[split]

    def eval_info(self) -> dict:
        return {**super().eval_info(), "path": str(self.path), "channels": self.data_shape[0],
                "image_size": self.image_size}
