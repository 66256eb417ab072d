"""The paper's Figure 1 for 2-D data (the Swiss roll)."""

from __future__ import annotations

from pathlib import Path
import torch

from dpm.figures.save import plt, save
from dpm.model.sampling import sample


def points2d(module, dm, path: Path, seed: int = 0, n: int = 2000, progress: bool = False) -> Path:
    """The paper's Figure 1 for 2-D data: forward diffusion q(x_t) (top), reverse samples p(x_t) at the same
    times (middle), and the drift f_mu(x_t, t) - x_t of the reverse kernel (bottom), at t = 0, T/2, T."""
    diffusion, net, T = module.diffusion, module.net, module.diffusion.T
    times = [0, T // 2, T]
    g = torch.Generator(device=module.device).manual_seed(seed)
    x0 = dm.splits["test"][:n].to(module.device)
    with torch.no_grad():
        forward = {0: x0, **{t: diffusion.q_sample(x0, torch.full((len(x0),), t, device=module.device), g)
                             for t in times[1:]}}
    _, reverse = sample(module, (n, 2), g, "sampling", progress, keep=tuple(times))
    fig, axes = plt.subplots(3, 3, figsize=(10, 10), sharex=True, sharey=True)
    for col, t in enumerate(times):
        for row, (states, label) in enumerate(((forward, "q"), (reverse, "p"))):
            pts = states[t].cpu()
            axes[row, col].scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
            axes[row, col].set_title(f"{label}(x^({t}))")
        t_drift = max(t, 2)
        grid = torch.stack(torch.meshgrid(torch.linspace(-2.5, 2.5, 21), torch.linspace(-2.5, 2.5, 21),
                                          indexing="xy"), -1).reshape(-1, 2).to(module.device)
        tt = torch.full((len(grid),), t_drift, device=module.device)
        with torch.no_grad():
            mu = diffusion.p_params(net(grid, tt).float(), grid, tt)[0]
        drift = (mu - grid).cpu()
        grid = grid.cpu()
        axes[2, col].quiver(grid[:, 0], grid[:, 1], drift[:, 0], drift[:, 1], angles="xy")
        axes[2, col].set_title(f"f_mu(x^({t_drift}), {t_drift}) - x^({t_drift})")
    for ax in axes.flat:
        ax.set_xlim(-2.5, 2.5)
        ax.set_ylim(-2.5, 2.5)
        ax.set_aspect("equal")
    fig.suptitle(f"{dm.name}: forward diffusion (top), reverse samples (middle), drift (bottom); T = {T}")
    return save(fig, path)
