"""Figures of the posterior tasks (dpm.tasks): rows of examples (original / observed / result) for images and
binary sequences, and constrained samples of 2-D data."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.ticker import MaxNLocator

from dpm.figures.image import tile
from dpm.figures.sequence import colours
from dpm.figures.save import plt, save


def image_rows(rows: dict[str, torch.Tensor], path: Path, title: str) -> Path:
    """One row of images per entry of `rows` (label -> [n, C, H, W] raw pixel values, clipped to [0, 1] here),
    the same example in each column; grey for one channel, RGB for three."""
    n = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), 1, figsize=(min(1.0 * n + 1, 18), 1.6 * len(rows) + 0.6), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows.items()):
        grid = tile(images.float().clamp(0, 1), cols=n)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(label, fontsize=10, loc="left")
        ax.axis("off")
    fig.suptitle(title)
    return save(fig, path)


def sequence_rows(panels: dict[str, torch.Tensor], path: Path, title: str, classes: int | None = 2) -> Path:
    """One panel per entry (label -> [n, length] states: bits, or `classes` classes; NaN shows an unknown bin),
    rows are sequences; colours as dpm.figures.sequence.colours."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 5), squeeze=False)
    for ax, (label, seqs) in zip(axes[0], panels.items()):
        ax.imshow(seqs.float().cpu(), aspect="auto", interpolation="nearest", **colours(classes))
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("bin")
        ax.set_ylabel("example")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    return save(fig, path)


def half_plane_points(train: torch.Tensor, plain: torch.Tensor, samples: torch.Tensor, normal: torch.Tensor,
                      offset: float, path: Path, title: str) -> Path:
    """2-D points [n, 2]: plain model samples beside samples under r, the training data in grey under both, the
    half-plane's edge {x . normal = offset} (normal of unit length) as a dashed line."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2), sharex=True, sharey=True)
    direction = torch.stack([-normal[1], normal[0]])
    edge = offset * normal[None] + torch.linspace(-4, 4, 2)[:, None] * direction[None]
    for ax, (label, pts) in zip(axes, (("model samples", plain), ("samples under r (Eq. 61)", samples))):
        ax.scatter(train[:, 0], train[:, 1], s=1, c="0.8", label="training data")
        ax.scatter(pts[:, 0], pts[:, 1], s=2, c="C3", label=label)
        ax.plot(edge[:, 0], edge[:, 1], "k--", lw=1, label="edge of the half-plane")
        ax.set_title(label)
        ax.set_xlim(-2.5, 2.5)
        ax.set_ylim(-2.5, 2.5)
        ax.set_aspect("equal")
    axes[1].legend(loc="lower right", fontsize=8, markerscale=4)
    fig.suptitle(title)
    return save(fig, path)
