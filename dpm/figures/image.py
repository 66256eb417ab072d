"""A grid of model samples beside a grid of training images (the paper's Fig. App.1 and Fig. 4, side by side)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dpm.figures.save import plt, save
from dpm.model.sampling import sample


def tile(images: torch.Tensor, pad: int = 1, cols: int | None = None) -> torch.Tensor:
    """[n, C, H, W] in [0, 1] -> one image [rows (H + pad) + pad, cols (W + pad) + pad, C], near-square unless
    cols is given, the gaps white."""
    n, C, H, W = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.ones(C, rows * (H + pad) + pad, cols * (W + pad) + pad)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[:, pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = im
    return grid.permute(1, 2, 0)


def pixels(dm, x: torch.Tensor) -> torch.Tensor:
    """What to show of data x [n, C, H, W] (normalised, as the model sees it), in [0, 1]: class k of C (dm.kind.classes)
    as k / (C - 1); real values mapped back to raw pixel values (x * scale + shift) and clipped."""
    classes = dm.kind.classes
    return (x / (classes - 1) if classes else dm.denormalize(x)).clamp(0, 1)


def image(module, dm, path: Path, seed: int = 0, n: int = 64, progress: bool = False) -> Path:
    """n samples of the reverse process (x_T ~ pi with a generator seeded by `seed`, every step including the
    fixed last one) next to the first n training images, both shown as `pixels`; grey for one channel, RGB for
    three."""
    diffusion = module.diffusion
    g = torch.Generator(device=module.device).manual_seed(seed)
    x0, _ = sample(module, (n, *dm.data_shape), g, "sampling", progress)
    panels = {f"samples (seed {seed})": pixels(dm, x0.float().cpu()), "training images": pixels(dm, dm.splits["train"][:n])}
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, (title, images) in zip(axes, panels.items()):
        grid = tile(images)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"{dm.name}: {diffusion.title}, T = {diffusion.T}")
    return save(fig, path)
