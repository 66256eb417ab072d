"""Figures of a trained model, one function per kind of data (the data set's DataKind names it: dm.kind.figure),
each writing a PNG.

A figure function takes (module, dm, path, seed, progress=False) and returns the path it wrote; it samples
through dpm.model.sampling.sample (progress: its progress line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from dpm.figures.image import image
from dpm.figures.pairs import pairs
from dpm.figures.points2d import points2d
from dpm.figures.sequence import sequence

FIGURES: dict[str, Callable[..., Path]] = {
    "points2d": points2d,
    "sequence": sequence,
    "image": image,
    "pairs": pairs,
}


def draw(module, dm, path: Path, seed: int = 0, progress: bool = False) -> Path:
    """Write the figure for dm's kind of data to path (PNG), with the module in eval mode; progress: a progress
    line over its sampling."""
    figure = dm.kind.figure
    if figure not in FIGURES:
        raise ValueError(f"no figure {figure!r} for {dm.name}; known: {sorted(FIGURES)} (or figure_kind='' to "
                         "choose one from the data's shape)")
    was_training = module.training
    module.eval()
    try:
        return FIGURES[figure](module, dm, path, seed, progress=progress)
    finally:
        module.train(was_training)
