"""task=inpaint: fill a region of held-out images, r a delta on the known pixels (docs/paper.md §6.2-6.3; Fig. 5 fills a
central square of bark, the released code the left half of each image), as the paper's clamp (inpaint.particles=1,
r_over_t) or by SMC over inpaint.particles > 1 particles (SMCDiff, Trippe et al. 2022, dpm.core.smc; not in the
paper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from dpm.figures.image import pixels
from dpm.figures.posterior import image_rows
from dpm.ranges import real
from dpm.core.posterior import DeltaR, check_factor
from dpm.tasks import common

MASKS = ("centre", "left", "right", "random")


def make_mask(spec: str, shape: tuple[int, ...], fraction: float, seed: int) -> torch.Tensor:
    """Which pixels to fill, bool [C, H, W] (True: unknown) for a named mask or a mask file.

    centre: a central square whose side is `fraction` of the image side; left / right: that half of the columns
    (the released code fills the left half); random: each pixel (all channels together) with probability
    `fraction`, from a generator seeded by `seed`; a path: a .npy array or a grey .png image, [H, W] or [C, H, W],
    nonzero (npy) or brighter than half (png) where to fill."""
    C, H, W = shape
    missing = torch.zeros(H, W, dtype=torch.bool)
    if spec == "centre":
        h, w = max(1, round(fraction * H)), max(1, round(fraction * W))
        missing[(H - h) // 2:(H - h) // 2 + h, (W - w) // 2:(W - w) // 2 + w] = True
    elif spec == "left":
        missing[:, : W // 2] = True
    elif spec == "right":
        missing[:, W // 2:] = True
    elif spec == "random":
        missing = torch.rand(H, W, generator=torch.Generator().manual_seed(seed)) < fraction
    else:
        missing = read_mask_file(Path(spec), shape)
    missing = missing.expand(C, H, W).clone() if missing.dim() == 2 else missing
    if not missing.any():
        raise ValueError(f"inpaint.mask={spec!r} (inpaint.fraction={fraction}) leaves no pixel to fill")
    return missing


def read_mask_file(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """A mask file as bool [H, W] or [C, H, W], checked against the data's shape [C, H, W]."""
    if not path.is_file():
        raise ValueError(f"inpaint.mask={str(path)!r} is neither one of {list(MASKS)} nor an existing file")
    if path.suffix not in (".npy", ".png"):
        raise ValueError(f"inpaint.mask={str(path)!r}: a mask file must be .npy or .png")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image.convert("L")) > 127
    except (OSError, ValueError, SyntaxError) as err:  # not an image, a pickled (object) array, a truncated file
        raise ValueError(f"inpaint.mask={str(path)!r} could not be read as a {path.suffix} mask "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); give a "
                         "numeric .npy array or a grey .png image, nonzero / bright where to fill") from None
    if path.suffix == ".npy":
        if array.dtype.kind not in "biuf":
            raise ValueError(f"inpaint.mask={str(path)!r} holds a {array.dtype} array; a mask must be numeric or bool")
        array = array != 0
    if array.shape not in (tuple(shape[1:]), tuple(shape)):
        raise ValueError(f"inpaint.mask={str(path)!r} has shape {array.shape}; this data needs {tuple(shape[1:])} "
                         f"(H, W) or {tuple(shape)} (C, H, W)")
    return torch.from_numpy(array.copy())


def check(cfg: DictConfig, dm, diffusion) -> dict:
    """The task's settings, checked against the data before any sampling."""
    s = common.settings(cfg, "inpaint")
    check_factor(diffusion, DeltaR, "inpaint")
    if dm.kind.data != "image":
        raise ValueError(f"task=inpaint needs image data; {dm.name} is not (task=complete fills sequences)")
    fraction = real("inpaint.fraction", s.get("fraction", 0.5), 0, 1, low_open=True)
    n = common.positive_int("inpaint.n", s.get("n", 16))
    common.held_out(dm, cfg.split, n, "inpaint.n")
    mask = make_mask(str(s.get("mask", "centre")), tuple(dm.data_shape), float(fraction), cfg.seed)
    over_t = common.check_r_over_t(cfg)
    smc = common.check_particles(cfg, "inpaint", over_t)
    common.check_smc_memory(cfg, "inpaint", n, tuple(dm.data_shape), smc["particles"])
    return {"n": n, "missing": mask, "mask": str(s.get("mask", "centre")), "over_t": over_t, **smc}


def run(module, dm, cfg: DictConfig, out_dir: Path, device: torch.device, s: dict) -> dict:
    x0 = common.held_out(dm, cfg.split, s["n"], "inpaint.n").to(device)
    known = ~s["missing"].to(device)[None].expand_as(x0)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    filled = common.fill_known(module, x0, known, s, g, "inpaint", cfg.get("progress", True))
    result, x_T = filled.x0, filled.x_T
    exact = bool(torch.equal(result[known], x0[known]))
    mse = (result - x0)[~known].pow(2).mean().item()
    common.save_npz(out_dir / "inpaint.npz", x0=x0, missing=s["missing"], x_T=x_T, result=result,
                    shift=dm.shift, scale=dm.scale, **filled.arrays)
    start = ("start x_T (noise in the region to fill)" if s["particles"] == 1 else
             "start x_T (noise; known pixels at their forward draw y_T)")  # SMC starts from y_T, not the values
    image_rows({"original": pixels(dm, x0.cpu()), start: pixels(dm, x_T.cpu()),
                "inpainted sample": pixels(dm, result.cpu())},
               out_dir / "inpaint.png", f"{dm.name}: inpainting, mask {s['mask']}, {filled.method}")
    out = {"task": "inpaint", "dataset": dm.name, "split": cfg.split, "n_examples": s["n"], "mask": s["mask"],
           "n_missing_per_image": int(s["missing"].sum()), **filled.record, "known_pixels_exact": exact,
           "mse_missing": mse}
    lines = [f"inpaint {dm.name}: {s['n']} {cfg.split} images, {out['n_missing_per_image']} pixels filled per image",
             *filled.lines, f"known pixels equal the given values exactly: {exact}",
             f"MSE of filled pixels to the originals (normalised units): {mse:.4f}"]
    if dm.kind.classes:  # classes: how many filled pixels are the original's class
        out["missing_equal_fraction"] = (result == x0)[~known].float().mean().item()
        lines.append(f"filled pixels of the original's class: {100 * out['missing_equal_fraction']:.1f}%")
    return common.finish(out_dir, "inpaint", out, lines)
