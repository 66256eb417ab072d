"""task=sample: the data set's figure of model samples (dpm.figures.draw) with a fixed seed, out_dir/samples.png."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from dpm.figures import FIGURES, draw


def check(cfg: DictConfig, dm, diffusion) -> dict:
    if dm.kind.figure not in FIGURES:
        raise ValueError(f"task=sample has no figure for {dm.name} (its figure {dm.kind.figure!r}; figures: "
                         f"{sorted(FIGURES)})")
    return {}


def run(module, dm, cfg: DictConfig, out_dir: Path, device: torch.device, s: dict) -> dict:
    path = draw(module, dm, out_dir / "samples.png", cfg.seed, progress=cfg.get("progress", True))
    return {"figure": str(path)}
