"""Samples of a trained model's reverse process with a progress display: the one loop that the figures, the
evaluate tasks and the sample task all draw through."""

from __future__ import annotations

import torch

from dpm.io.progress import Progress


def sample(module, shape: tuple[int, ...], generator: torch.Generator, desc: str = "sampling",
           progress: bool = True, *, perturb=None, x_T: torch.Tensor | None = None, keep: tuple[int, ...] = (),
           batch: int | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """x0 [N, *D] (shape = (N, *D)) from the (perturbed, Eq. 22) reverse process on the module's device, and the
    states x_t [N, *D] for each t in `keep` (dpm.core.diffusion.Diffusion.sample), without gradients.

    One progress line over the T steps of every batch (progress=False: none); batch: at most this many samples
    per reverse pass (the passes share `generator`), not with x_T, perturb or keep, which hold all N rows."""
    diffusion, n = module.diffusion, shape[0]
    batch = n if batch is None else batch
    if batch < n and (x_T is not None or perturb is not None or keep):
        raise ValueError("sample(batch=...) draws plain samples only: x_T, perturb and keep cover all rows")
    sizes = [min(batch, n - start) for start in range(0, n, batch)]
    out, kept = [], {}
    with torch.no_grad(), Progress(diffusion.T * len(sizes), desc, unit="step", enabled=progress) as bar:
        for size in sizes:
            x0, kept = diffusion.sample(module.net, (size, *shape[1:]), generator, module.device, keep=keep,
                                        on_step=bar.update, perturb=perturb, x_T=x_T)
            out.append(x0)
    return torch.cat(out) if len(out) > 1 else out[0], kept
