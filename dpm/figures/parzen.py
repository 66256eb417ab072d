"""The Parzen task's figure: model samples beside training images, and the validation curve that picks sigma."""

from __future__ import annotations

from pathlib import Path

import torch

from dpm.figures.image import tile
from dpm.figures.save import plt, save


def parzen_figure(samples: torch.Tensor, train: torch.Tensor, sigmas: torch.Tensor,
                  curves: dict[str, torch.Tensor], path: Path, title: str, n: int = 64) -> Path:
    """Panels: n samples and n training images ([N, C, H, W] pixel values in [0, 1]); mean validation
    log-likelihood (nats) against sigma for each entry of curves (label -> [K]), its best sigma marked."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    for ax, (label, images) in zip(axes, (("model samples", samples[:n]), ("training images", train[:n]))):
        grid = tile(images.float().clamp(0, 1))
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(label)
        ax.axis("off")
    for label, curve in curves.items():
        best = int(curve.argmax())
        line, = axes[2].semilogx(sigmas.cpu(), curve.cpu(), "o-", label=label)
        axes[2].semilogx(float(sigmas[best]), float(curve[best]), "*", ms=14, color=line.get_color())
    axes[2].set_xlabel("sigma (pixel units)")
    axes[2].set_ylabel("mean validation log-likelihood (nats)")
    axes[2].legend()
    fig.suptitle(title)
    return save(fig, path)
