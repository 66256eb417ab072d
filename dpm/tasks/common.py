"""What the evaluate tasks share: reading and checking their settings, held-out examples, seeded sampling with a
progress display, and writing their numbers and arrays (atomically, dpm.files)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from dpm.files import write_atomic, write_json
from dpm.posterior import R_OVER_T, Perturb
from dpm.progress import Progress


def settings(cfg: DictConfig, task: str) -> DictConfig:
    """The task's own node of the evaluate config (e.g. cfg.denoise); an empty one where it is absent."""
    node = cfg.get(task)
    return node if node is not None else DictConfig({})


def positive_int(key: str, value: object) -> int:
    """value as an int >= 1, else a ValueError naming the key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}={value!r} is invalid: must be a positive integer")
    return value


def positive_float(key: str, value: object, why: str = "") -> float:
    """value as a finite float > 0, else a ValueError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{key}={value!r} is invalid: must be a finite number > 0{why}")
    return float(value)


def check_r_over_t(cfg: DictConfig, allowed: tuple[str, ...] = R_OVER_T) -> str:
    """cfg.r_over_t, one of `allowed` (diffused applies only to a delta r on known coordinates)."""
    over_t = cfg.get("r_over_t", "constant")
    if over_t not in allowed:
        raise ValueError(f"r_over_t={over_t!r} is {'unknown' if over_t not in R_OVER_T else 'not for task=' + cfg.task}"
                         f"; valid choices: {list(allowed)}")
    return over_t


def check_kind(task: str, diffusion, kinds: tuple[str, ...]) -> None:
    if diffusion.kind not in kinds:
        raise ValueError(f"task={task} needs {' or '.join(kinds)} diffusion; this checkpoint's is {diffusion.kind}")


def held_out(dm, split: str, n: int, key: str) -> torch.Tensor:
    """The first n examples of a split (normalised, [n, *D]); a clear error if the split holds fewer."""
    x0 = dm.splits[split]
    if n > len(x0):
        raise ValueError(f"{key}={n} is more than the {len(x0)} examples of the {split} split")
    return x0[:n]


def sample(module, shape: tuple[int, ...], generator: torch.Generator, desc: str, enabled: bool,
           perturb: Perturb | None = None, x_T: torch.Tensor | None = None) -> torch.Tensor:
    """One batch of the (perturbed) reverse process on the module's device, with a progress display over the T
    steps: x0 [N, *D]."""
    with Progress(module.diffusion.T, desc, unit="step", enabled=enabled) as bar:
        x0, _ = module.diffusion.sample(module.net, shape, generator, module.device, on_step=bar.update,
                                        perturb=perturb, x_T=x_T)
    return x0


def start_with_known(module, x_known: torch.Tensor, known: torch.Tensor, generator: torch.Generator,
                     over_t: str) -> torch.Tensor:
    """x_T for a delta r on known coordinates: a draw from pi with the known ones set (the released inpainting;
    Eq. 23 makes p~(x_T) ∝ pi(x_T) r(x_T)); the plain draw when r is tempered (r^0 = 1 at t = T); the known ones
    drawn from q(x_T | x_0 = x_known) when diffused."""
    diffusion = module.diffusion
    x_T = diffusion.prior_sample(tuple(x_known.shape), generator, module.device)
    if over_t == "tempered":
        return x_T
    if over_t == "diffused":
        T = torch.full((len(x_known),), diffusion.T, device=x_known.device, dtype=torch.long)
        x_known = diffusion.q_sample(x_known, T, generator)
    return torch.where(known, x_known, x_T)


def save_npz(path: Path, **arrays: torch.Tensor | np.ndarray | float) -> Path:
    """The arrays as one .npz (numpy's own format), written atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)
                        for k, v in arrays.items()})
    return write_atomic(path, lambda f: f.write(buffer.getvalue()))


def finish(out_dir: Path, task: str, result: dict, lines: list[str]) -> dict:
    """Write out_dir/<task>.json, print the summary lines and the files written; return the result."""
    write_json(out_dir / f"{task}.json", result)
    print("\n".join(lines))
    print(f"wrote {', '.join(str(out_dir / f'{task}.{ext}') for ext in ('json', 'png', 'npz'))}")
    return result
