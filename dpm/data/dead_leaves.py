"""Dead leaves: images of occluding disks with power-law distributed radii and uniform grey levels
(Lee, Mumford and Huang 2001; the paper's Table 1 and Fig. 4, docs/paper.md §7.1), generated and cached to disk."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dpm.data.base import SPLITS
from dpm.data.images import ImageDataModule, check_count
from dpm.io.progress import Progress
from dpm.ranges import count, real

GENERATOR_VERSION = 1  # part of the cache key: bump when the generator's output changes


def power_law(u: np.ndarray, a: float, r_min: float, r_max: float) -> np.ndarray:
    """Inverse CDF of the density proportional to r^-a on [r_min, r_max], at uniforms u."""
    if abs(a - 1.0) < 1e-12:
        return r_min * (r_max / r_min) ** u
    lo, hi = r_min ** (1.0 - a), r_max ** (1.0 - a)
    return (lo + u * (hi - lo)) ** (1.0 / (1.0 - a))


def power_law_mass(a: float, r_min: float, r_max: float) -> float:
    """integral of r^-a over [r_min, r_max]."""
    if abs(a - 1.0) < 1e-12:
        return math.log(r_max / r_min)
    return (r_min ** (1.0 - a) - r_max ** (1.0 - a)) / (a - 1.0)


def dead_leaves(n: int, size: int, r_min: float, r_max: float, alpha: float, rng: np.random.Generator,
                n_levels: int = 256, chunk: int = 4096, on_done: Callable[[int], None] | None = None) -> np.ndarray:
    """n independent size x size windows of a stationary dead-leaves image, uint8 [n, size, size].

    Disks (radius density ~ r^-alpha on [r_min, r_max] in pixels, centres a Poisson process, grey level
    uniform over n_levels levels) are drawn from the top of the stack down; a pixel (centre at (i + 1/2,
    j + 1/2)) shows the first disk that covers it. Only disks whose bounding box meets the window can be
    seen, so only those are drawn: their radius has density ~ r^-alpha (size + 2 r)^2 (the area of centres
    whose box meets the window), a mixture of three power laws, and their centre is uniform over
    [-r, size + r]^2. This is exact (no border effects). Windows are made `chunk` at a time (bounded memory),
    each chunk drawing one disk per still-uncovered window per round, all windows at once. on_done(k) is told
    whenever k more windows are finished (a dpm.io.progress.Progress's update).
    """
    # r^-alpha (S + 2r)^2 = S^2 r^-alpha + 4 S r^(1-alpha) + 4 r^(2-alpha)
    exps = np.array([alpha, alpha - 1.0, alpha - 2.0])
    mass = np.array([size**2, 4.0 * size, 4.0]) * np.array([power_law_mass(a, r_min, r_max) for a in exps])
    weights = mass / mass.sum()
    centre = np.arange(size, dtype=np.float32) + 0.5
    out = np.zeros((n, size, size), np.uint8)
    for first in range(0, n, chunk):
        ids = np.arange(first, min(first + chunk, n))  # the windows of this chunk not yet covered
        value = np.zeros((ids.size, size, size), np.uint8)
        unset = np.ones((ids.size, size, size), bool)
        rounds = 0
        while ids.size:
            m = ids.size
            component = rng.choice(3, size=m, p=weights)
            u = rng.random(m)
            r = np.empty(m)
            for c in range(3):
                sel = component == c
                r[sel] = power_law(u[sel], exps[c], r_min, r_max)
            cx, cy = (rng.random((2, m)) * (size + 2 * r) - r).astype(np.float32)
            grey = rng.integers(0, n_levels, m, dtype=np.uint8)
            dy2 = (centre[None, :] - cy[:, None]) ** 2  # [m, size], by row
            dx2 = (centre[None, :] - cx[:, None]) ** 2  # [m, size], by column
            hit = dy2[:, :, None] + dx2[:, None, :] <= (r * r).astype(np.float32)[:, None, None]
            hit &= unset
            np.copyto(value, grey[:, None, None], where=hit)
            unset ^= hit  # hit is within unset
            rounds += 1
            if rounds % 4:
                continue
            done = ~unset.any(axis=(1, 2))
            if done.any():  # finished windows leave the working set
                out[ids[done]] = value[done]
                if on_done is not None:
                    on_done(int(done.sum()))
                ids, value, unset = ids[~done], value[~done], unset[~done]
    return out


class DeadLeavesDataModule(ImageDataModule):
    """Generated dead-leaves patches [1, image_size, image_size], 8-bit grey.

    Each split is its own n_* independent windows, drawn with seed (seed, split index), so no two examples
    share a disk and a split does not change when another's size does. Radii in pixels: density ~ r^-alpha
    on [r_min, r_max] (alpha = 3 is the scale-invariant law of Lee, Mumford and Huang 2001; the paper gives
    no sizes, docs/paper.md §7.1). Each split is cached as data_dir/dead_leaves/<all generation parameters>.npz
    (uint8) after it is first generated (cache=false: write nothing; a cache already there is still read).
    """

    name = "dead_leaves"
    n_levels = 256

    def __init__(self, image_size: int = 32, n_train: int = 50000, n_val: int = 2000, n_test: int = 10000,
                 r_min: float = 1.0, r_max: float = 100.0, alpha: float = 3.0, cache: bool = True,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        image_size = count("dataset.image_size", image_size, 1)
        r_min, r_max = real("dataset.r_min", r_min, 0, low_open=True), real("dataset.r_max", r_max, 0, low_open=True)
        alpha = real("dataset.alpha", alpha)
        if not r_min < r_max:
            raise ValueError(f"dataset.r_min={r_min}, dataset.r_max={r_max} are invalid: need 0 < r_min < r_max")
        self.image_size, self.r_min, self.r_max, self.alpha = int(image_size), float(r_min), float(r_max), float(alpha)
        self.sizes = {s: check_count(f"n_{s}", n, allow_none=False) for s, n in zip(SPLITS, (n_train, n_val, n_test))}
        self.cache = bool(cache)

    def cache_path(self, split: str) -> Path:
        key = (f"v{GENERATOR_VERSION}_size{self.image_size}_n{self.sizes[split]}_r{self.r_min:g}-{self.r_max:g}"
               f"_alpha{self.alpha:g}_seed{self.seed}_{split}")
        return self.data_dir / "dead_leaves" / f"{key}.npz"

    def generate(self, split: str) -> np.ndarray:
        """uint8 [n, 1, size, size] for one split."""
        rng = np.random.default_rng([self.seed, SPLITS.index(split)])
        n = self.sizes[split]
        with Progress(n, f"dead leaves {split} split", unit="image") as bar:
            return dead_leaves(n, self.image_size, self.r_min, self.r_max, self.alpha, rng, self.n_levels,
                               on_done=bar.update)[:, None]

    def levels(self, split: str) -> np.ndarray:
        """The split's uint8 levels, from the cache when it is there (and written there when it is not)."""
        path = self.cache_path(split)
        if path.is_file():  # reading an existing cache is the same data, generated once
            with np.load(path) as f:
                return f["images"]
        images = self.generate(split)
        if self.cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # atomic: ranks may race
            np.savez_compressed(tmp, images=images)
            os.replace(tmp, path)
        return images

    def prepare_data(self) -> None:
        for split in SPLITS:
            if self.cache and not self.cache_path(split).is_file():
                self.levels(split)

    def make_split(self, split: str) -> torch.Tensor:
        return self.to_raw(self.levels(split))
