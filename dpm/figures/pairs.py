"""Vectors of any other shape: pairwise scatter plots of a few coordinates, the data beside model samples."""

from __future__ import annotations

from pathlib import Path

import torch

from dpm.model.sampling import sample
from dpm.figures.save import plt, save


def pairs(module, dm, path: Path, seed: int = 0, n: int = 1000, n_coords: int = 4,
          progress: bool = False) -> Path:
    """A k x k grid over the first k = min(n_coords, D) coordinates of the flattened examples (normalised units):
    below the diagonal the test data (x_i against x_j), above it model samples of the reverse process (x_T ~ pi
    seeded by `seed`), on the diagonal both histograms of x_i overlaid."""
    diffusion = module.diffusion
    data = dm.splits["test"][:n].flatten(1)
    g = torch.Generator(device=module.device).manual_seed(seed)
    samples, _ = sample(module, (len(data), *dm.data_shape), g, "sampling", progress)
    samples = samples.float().cpu().flatten(1)
    k = min(n_coords, data.shape[1])
    fig, axes = plt.subplots(k, k, figsize=(2.6 * k + 1, 2.6 * k + 1), squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if i == j:
                ax.hist(data[:, i], bins=40, alpha=0.5, density=True, label="data")
                ax.hist(samples[:, i].clamp(-6, 6), bins=40, alpha=0.5, density=True, label="samples")
            else:
                pts = data if i > j else samples
                ax.scatter(pts[:, j], pts[:, i], s=1, alpha=0.4, color="C0" if i > j else "C1")
            if i == k - 1:
                ax.set_xlabel(f"x[{j}]")
            if j == 0:
                ax.set_ylabel(f"x[{i}]")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{dm.name}: data (below the diagonal) and samples (above), {diffusion.title}, "
                 f"T = {diffusion.T}", fontsize=10)
    return save(fig, path)
