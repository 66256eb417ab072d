"""Bark: random grey patches cut from a folder of texture photographs (the paper used the UIUC texture set's
bark classes T01-T04, Lazebnik et al. 2005; docs/paper.md §7.1). With no folder, scikit-image's bundled brick,
grass and gravel textures stand in, so it runs offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dpm.data.base import SPLITS
from dpm.data.images import ImageDataModule, check_count
from dpm.ranges import count, real

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".bmp", ".tif", ".tiff", ".gif", ".webp")
SPLIT_BY = ("region", "image")
DEFAULT_TEXTURES = ("brick", "grass", "gravel")


def load_folder(folder: Path, pattern: str) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 grey image [h, w]) for every image file matching pattern under folder, sorted by path."""
    from PIL import Image

    if not folder.is_dir():
        raise FileNotFoundError(f"dataset.folder={folder} is not a directory. Give a folder of texture images "
                                "(e.g. the UIUC texture set's T01-T04), or dataset.folder=null for the "
                                "textures bundled with scikit-image.")
    paths = sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) match dataset.glob={pattern!r} "
                                f"under dataset.folder={folder}")
    images = []
    for path in paths:
        try:
            with Image.open(path) as im:
                images.append((str(path.relative_to(folder)), np.asarray(im.convert("L"), dtype=np.uint8)))
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for truncated or foreign files
            raise ValueError(f"{path} (under dataset.folder) is not a readable image ({type(err).__name__}: "
                             f"{err}); remove or replace it") from None
    return images


def bundled_textures() -> list[tuple[str, np.ndarray]]:
    """scikit-image's brick, grass and gravel, uint8 grey [512, 512] each (shipped with the package)."""
    import skimage.data

    return [(name, np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)) for name in DEFAULT_TEXTURES]


def random_patches(regions: list[np.ndarray], n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """n patches [n, size, size] at uniform random positions among all size x size windows of the regions
    (so a region is chosen with probability proportional to its number of windows)."""
    counts = np.array([(r.shape[0] - size + 1) * (r.shape[1] - size + 1) for r in regions], dtype=np.float64)
    which = rng.choice(len(regions), size=n, p=counts / counts.sum())
    out = np.empty((n, size, size), np.uint8)
    for i, region in enumerate(regions):
        sel = np.flatnonzero(which == i)
        y = rng.integers(0, region.shape[0] - size + 1, sel.size)
        x = rng.integers(0, region.shape[1] - size + 1, sel.size)
        out[sel] = np.lib.stride_tricks.sliding_window_view(region, (size, size))[y, x]  # a view: no index arrays
    return out


class BarkDataModule(ImageDataModule):
    """Grey patches [1, patch_size, patch_size] of 8-bit texture images, at random positions.

    folder: a folder of images (any of IMAGE_SUFFIXES; colour is converted to grey), searched with `glob`
    (e.g. folder=/data/uiuc glob='T0[1-4]/*.jpg'); null: scikit-image's brick, grass and gravel.
    split_by="region" (default): every image is cut into horizontal bands, the top (1 - val_fraction -
    test_fraction) for training, then a band for validation, the bottom band for test, so no pixel is in two
    splits. split_by="image": whole images go to one split (a fixed-seed permutation of the files, in the
    proportions of the fractions, at least one image each; needs >= 3 images).
    Each split's patches are drawn with seed (seed, split index); patches of one split may overlap.
    """

    name = "bark"
    data_package = "scikit-image"  # with no folder: its bundled textures
    location_keys = ("folder",)
    n_levels = 256

    def __init__(self, folder: str | None = None, glob: str = "**/*", patch_size: int = 32, n_train: int = 50000,
                 n_val: int = 2000, n_test: int = 10000, split_by: str = "region", val_fraction: float = 0.15,
                 test_fraction: float = 0.15, **kwargs) -> None:
        if "data_dir" in kwargs:  # the image base takes it, but bark reads its images from `folder` alone
            raise ValueError(f"dataset.data_dir={kwargs['data_dir']} is not used by bark: give the folder of "
                             "texture images as dataset.folder=DIR (or dataset.folder=null for the textures "
                             "bundled with scikit-image)")
        super().__init__(**kwargs)
        if split_by not in SPLIT_BY:
            raise ValueError(f"dataset.split_by={split_by!r} is unknown; valid choices: {list(SPLIT_BY)}")
        patch_size = count("dataset.patch_size", patch_size, 1)
        val_fraction = real("dataset.val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)
        test_fraction = real("dataset.test_fraction", test_fraction, 0, 1, low_open=True, high_open=True)
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(f"dataset.val_fraction={val_fraction}, dataset.test_fraction={test_fraction} are "
                             "invalid: each must be > 0 and together < 1")
        self.folder = None if folder in (None, "") else Path(str(folder)).expanduser()
        self.glob, self.patch_size, self.split_by = glob, int(patch_size), split_by
        self.fractions = {"train": 1 - float(val_fraction) - float(test_fraction), "val": float(val_fraction),
                          "test": float(test_fraction)}
        self.sizes = {s: check_count(f"n_{s}", n, allow_none=False) for s, n in zip(SPLITS, (n_train, n_val, n_test))}
        self._regions: dict[str, list[np.ndarray]] | None = None

    @property
    def source(self) -> str:
        return str(self.folder / self.glob) if self.folder else "scikit-image " + ", ".join(DEFAULT_TEXTURES)

    def data_files(self) -> tuple[list[Path], Path | None]:
        if self.folder is None:
            return [], None
        return sorted(p for p in self.folder.glob(self.glob) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), \
            self.folder

    def regions(self) -> dict[str, list[np.ndarray]]:
        """The parts of the source images each split draws its patches from."""
        if self._regions is None:
            images = [im for _, im in (load_folder(self.folder, self.glob) if self.folder else bundled_textures())]
            self._regions = self._split_images(images) if self.split_by == "image" else self._split_rows(images)
            for split, regions in self._regions.items():
                usable = [r for r in regions if min(r.shape) >= self.patch_size]
                if not usable:
                    raise ValueError(f"dataset.patch_size={self.patch_size} is larger than every {split} part of "
                                     f"the images from {self.source} (sizes {[r.shape for r in regions]}); use a "
                                     "smaller patch_size or larger fractions")
                self._regions[split] = usable
        return self._regions

    def _split_rows(self, images: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
        out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for im in images:
            h = im.shape[0]
            b1 = round(h * self.fractions["train"])
            b2 = round(h * (self.fractions["train"] + self.fractions["val"]))
            out["train"].append(im[:b1])
            out["val"].append(im[b1:b2])
            out["test"].append(im[b2:])
        return out

    def _split_images(self, images: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
        n = len(images)
        if n < 3:
            raise ValueError(f"dataset.split_by=image needs at least 3 images; {self.source} has {n}. "
                             "Use dataset.split_by=region.")
        perm = np.random.default_rng(self.seed).permutation(n)
        n_val = max(1, round(n * self.fractions["val"]))
        n_test = max(1, round(n * self.fractions["test"]))
        n_val, n_test = min(n_val, n - 2), min(n_test, n - 1 - min(n_val, n - 2))
        picks = {"val": perm[:n_val], "test": perm[n_val:n_val + n_test], "train": perm[n_val + n_test:]}
        return {s: [images[i] for i in sorted(picks[s])] for s in SPLITS}

    def make_split(self, split: str) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, SPLITS.index(split)])
        patches = random_patches(self.regions()[split], self.sizes[split], self.patch_size, rng)
        return self.to_raw(patches)[:, None]

    def eval_info(self) -> dict:
        return {**super().eval_info(), "source": self.source, "split_by": self.split_by}
