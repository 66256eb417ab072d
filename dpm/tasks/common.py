"""What the evaluate tasks share: reading and checking their settings, held-out examples, a delta r on known
coordinates (one chain or SMC), and writing their numbers and arrays (atomically, dpm.io.files)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from dpm.io.files import write_atomic, write_json
from dpm.io.memory import available_bytes
from dpm.ranges import count, real
from dpm.core.posterior import R_OVER_T, DeltaR, perturbation
from dpm.io.progress import Progress
from dpm.core.smc import RESAMPLE_BELOW, smc_sample
from dpm.model.sampling import sample


def settings(cfg: DictConfig, task: str) -> DictConfig:
    """The task's own node of the evaluate config (e.g. cfg.denoise); an empty one where it is absent."""
    node = cfg.get(task)
    return node if node is not None else DictConfig({})


def positive_int(key: str, value: object) -> int:
    """value as an integer >= 1 (dpm.ranges), else a ConfigError naming the key."""
    return count(key, value, 1)


def positive_float(key: str, value: object, why: str = "") -> float:
    """value as a finite number > 0 (dpm.ranges), else a ConfigError naming the key."""
    return real(key, value, 0, low_open=True, why=why)


def check_r_over_t(cfg: DictConfig, allowed: tuple[str, ...] = R_OVER_T) -> str:
    """cfg.r_over_t, one of `allowed` (diffused applies only to a delta r on known coordinates)."""
    over_t = cfg.get("r_over_t", "constant")
    if over_t not in allowed:
        raise ValueError(f"r_over_t={over_t!r} is {'unknown' if over_t not in R_OVER_T else 'not for task=' + cfg.task}"
                         f"; valid choices: {list(allowed)}")
    return over_t


def check_particles(cfg: DictConfig, task: str, over_t: str) -> dict:
    """{"particles": cfg.<task>.particles, "chunk": cfg.batch_size} for a delta r on known coordinates.
    particles 1: the single chain of r_over_t; P > 1: SMC (dpm.core.smc, SMCDiff; not the paper's), which moves the known
    coordinates along a forward path of q and weights the particles by them, so it takes the place of r_over_t and
    is refused with any but its default, constant. chunk: rows (particles) per network call of SMC."""
    particles = positive_int(f"{task}.particles", settings(cfg, task).get("particles", 1))
    if particles > 1 and over_t != "constant":
        raise ValueError(f"r_over_t={over_t} does not combine with {task}.particles={particles}: SMC (particles > 1) "
                         f"sets the known coordinates itself, in place of r_over_t; leave r_over_t=constant or set "
                         f"{task}.particles=1")
    chunk = positive_int("batch_size", cfg.get("batch_size", 1000))
    return {"particles": particles, "chunk": chunk}


SMC_COPIES = 8  # float32 arrays of [N, P, *D] that SMC holds at once (particles, kernel mean and variance, log p, ...)


def check_smc_memory(cfg: DictConfig, task: str, n: int, data_shape: tuple[int, ...], particles: int) -> None:
    """Refuse an SMC run whose particles [n, particles, *D] cannot fit in the memory of the device it would run
    on, before anything is allocated, with what it would need."""
    need = SMC_COPIES * 4 * n * particles * math.prod(data_shape)
    device = str(cfg.get("device", "auto"))
    if device.startswith("cuda") or device == "auto" and torch.cuda.is_available():
        index = int(device.split(":")[1]) if ":" in device else 0
        have, where = torch.cuda.get_device_properties(index).total_memory, "the GPU's memory"
    else:
        have, where = available_bytes(), "the memory available here"
    if need > have:
        raise ValueError(f"{task}.particles={particles} with {task}.n={n} would need about {need / 2**30:,.1f} GiB "
                         f"({SMC_COPIES} arrays of {n} x {particles} x {math.prod(data_shape)} float32), more than "
                         f"{where} ({have / 2**30:,.1f} GiB); use fewer particles or fewer examples")


def held_out(dm, split: str, n: int, key: str) -> torch.Tensor:
    """The first n examples of a split (normalised, [n, *D]); a clear error if the split holds fewer."""
    x0 = dm.splits[split]
    if n > len(x0):
        raise ValueError(f"{key}={n} is more than the {len(x0)} examples of the {split} split")
    return x0[:n]


@dataclass
class Filled:
    """Samples under a delta r on known coordinates (fill_known): x0 and the start x_T of its chain (SMC: of the
    chosen particle's ancestral line), both [N, *D]; method, a label for figure titles; record, the numbers for
    <task>.json; lines, what to print; arrays, what to save."""

    x0: torch.Tensor
    x_T: torch.Tensor
    method: str
    record: dict
    lines: list[str]
    arrays: dict


def fill_known(module, x_known: torch.Tensor, known: torch.Tensor, s: dict, generator: torch.Generator, desc: str,
               enabled: bool) -> Filled:
    """Sample the unknown coordinates given x_known [N, *D] where known (bool [N, *D]), as the checked settings s
    say (over_t, and check_particles' particles and chunk): with particles > 1 by SMC (dpm.core.smc.smc_sample,
    SMCDiff; not the paper's), its progress display showing the effective sample size and the resamplings; with 1,
    the single perturbed chain of r_over_t (Eq. 22-23; constant: the paper's clamp)."""
    particles, over_t = s["particles"], s["over_t"]
    if particles == 1:
        x_T = start_with_known(module, x_known, known, generator, over_t)
        perturb = perturbation(module.diffusion, [DeltaR(known, x_known)], over_t)
        x0, _ = sample(module, tuple(x_known.shape), generator, desc, enabled, perturb=perturb, x_T=x_T)
        return Filled(x0, x_T, f"r over t {over_t}", {"sampler": "single chain", "r_over_t": over_t, "particles": 1},
                      [], {})
    with Progress(module.diffusion.T, f"{desc} (SMC)", unit="step", enabled=enabled) as bar:
        smc = smc_sample(module.diffusion, module.net, known, x_known, particles, generator, chunk=s["chunk"],
                         on_step=bar.update)
    summary = smc.summary()
    line = (f"SMC (SMCDiff, Trippe et al. 2022; not in the paper): {particles} particles per example, resampled "
            f"{summary['resamplings']} times ({summary['resamplings_per_example']:.2f} per example) when the ESS "
            f"fell below {RESAMPLE_BELOW:g} P; mean ESS {summary['mean_ess']:.2f}, "
            f"at the end {summary['final_ess']:.2f}")
    return Filled(smc.x0, smc.x_T, f"SMC, {particles} particles",
                  {"sampler": "smc", "r_over_t": None, **summary, "resample_below": RESAMPLE_BELOW}, [line],
                  {"particles": smc.particles, "log_w": smc.log_w, "ess": smc.ess, "resampled": smc.resampled})


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
    """Write out_dir/<task>.json and print the summary lines; return the result. (evaluate.py's last lines name
    every file written, once.)"""
    write_json(out_dir / f"{task}.json", result)
    print("\n".join(lines))
    return result
