"""The diffusion-rate schedule of a run: beta_t and alpha_bar_t = prod_{s<=t} (1 - beta_s) against t, log scale
(paper 2.4.1; for a learned schedule its start beside its end)."""

from __future__ import annotations

from pathlib import Path

import torch

from dpm.figures.save import plt, save


def schedule(betas: dict[str, torch.Tensor], path: Path, title: str = "") -> Path:
    """Two panels, beta_t and alpha_bar_t for t = 1..T on log axes, one curve per entry of betas (label -> beta
    float [T], e.g. {"start (step 0)": ..., "end (step 8000)": ...}). alpha_bar_T = 0 (the binomial schedule's
    beta_T = 1) has no place on a log axis and is left out of that curve."""
    fig, (ax_beta, ax_ab) = plt.subplots(1, 2, figsize=(11, 4))
    for (label, beta), style in zip(betas.items(), ("-", "--", ":", "-.")):
        beta = beta.detach().double().cpu()
        t = torch.arange(1, beta.numel() + 1)
        alpha_bar = torch.cumprod(1.0 - beta, 0)
        ax_beta.plot(t, beta, style, label=label)
        keep = alpha_bar > 0
        ax_ab.plot(t[keep], alpha_bar[keep], style, label=label)
    ax_beta.set(yscale="log", xlabel="t", ylabel="beta_t", title="diffusion rate beta_t")
    ax_ab.set(yscale="log", xlabel="t", ylabel="alpha_bar_t", title="signal left: alpha_bar_t = prod (1 - beta_s)")
    for ax in (ax_beta, ax_ab):
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=9)
    if title:
        fig.suptitle(title)
    return save(fig, path)
