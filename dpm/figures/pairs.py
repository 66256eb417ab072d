"""Vectors of any other shape: pairwise scatter plots of a few coordinates, the data beside model samples."""

from __future__ import annotations

from pathlib import Path

import torch

from dpm.model.sampling import sample
from dpm.figures.save import plt, save


def limits(data: torch.Tensor, margin: float = 0.1) -> list[tuple[float, float]]:
    """Per coordinate of data [N, k]: the range of its central 99 % widened by `margin` on each side (a few
    outlying samples do not squash the picture)."""
    lo, hi = torch.quantile(data.double(), 0.005, dim=0), torch.quantile(data.double(), 0.995, dim=0)
    pad = (hi - lo).clamp_min(1e-12) * margin
    return [(float(a), float(b)) for a, b in zip(lo - pad, hi + pad)]


def pairs(module, dm, path: Path, seed: int = 0, n: int = 1000, n_coords: int = 4,
          progress: bool = False) -> Path:
    """A k x k grid over the first k = min(n_coords, D) coordinates of the flattened examples, in the data's own
    units (the normalisation undone): below the diagonal the test data (x_i against x_j), above it model samples of
    the reverse process (x_T ~ pi seeded by `seed`), on the diagonal both histograms of x_i overlaid. Every panel
    of a column shares its x range, every panel of a row its y range (the data's), so data and samples compare
    point for point."""
    diffusion = module.diffusion
    data = dm.denormalize(dm.splits["test"][:n]).flatten(1)
    g = torch.Generator(device=module.device).manual_seed(seed)
    samples, _ = sample(module, (len(data), *dm.data_shape), g, "sampling", progress)
    samples = dm.denormalize(samples.float().cpu()).flatten(1)
    k = min(n_coords, data.shape[1])
    box = limits(data[:, :k])
    fig, axes = plt.subplots(k, k, figsize=(2.6 * k + 1, 2.6 * k + 1), squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if i == j:
                bins = torch.linspace(*box[i], 41).tolist()
                ax.hist(data[:, i].clamp(*box[i]), bins=bins, alpha=0.5, density=True, label="data")
                ax.hist(samples[:, i].clamp(*box[i]), bins=bins, alpha=0.5, density=True, label="samples")
            else:
                pts = data if i > j else samples
                ax.scatter(pts[:, j], pts[:, i], s=1, alpha=0.4, color="C0" if i > j else "C1")
                ax.set_ylim(*box[i])
            ax.set_xlim(*box[j])
            if i == k - 1:
                ax.set_xlabel(f"x[{j}]")
            if j == 0:
                ax.set_ylabel(f"x[{i}]")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{dm.name}: data (below the diagonal) and samples (above), in the data's units; "
                 f"{diffusion.title}, T = {diffusion.T}", fontsize=10)
    return save(fig, path)
