"""task=denoise: posterior samples of clean held-out images given y = x0 + sigma_d eps, r = N(x; y, sigma_d^2)
multiplied exactly into every step (docs/paper.md §6.2-6.3; the paper's CIFAR-10 figure uses sigma_d = 1 on images
scaled to unit variance, the released code starts the chain at y)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from dpm.figures.posterior import image_rows
from dpm.core.posterior import GaussianR, check_factor, perturbation
from dpm.model.sampling import sample
from dpm.tasks import common

STARTS = ("observed", "prior")
SIGMA_D_RANGE = (1e-3, 1e3)  # noise that float32 images and variances can hold


def check(cfg: DictConfig, dm, diffusion) -> dict:
    s = common.settings(cfg, "denoise")
    check_factor(diffusion, GaussianR, "denoise")
    if dm.kind.data != "image" or dm.kind.classes is not None:
        raise ValueError(f"task=denoise needs image data of real pixel values; {dm.name} holds {dm.kind.data}"
                         + (f" of {dm.kind.classes} classes" if dm.kind.classes else ""))
    sigma_d = common.positive_float("denoise.sigma_d", s.get("sigma_d", 1.0),
                                    " (the noise's standard deviation in normalised units; the paper's is 1)")
    low, high = SIGMA_D_RANGE
    if not low <= sigma_d <= high:  # below: y equals x0 in float32 (no noise to remove); above: sigma_d^2 overflows
        raise ValueError(f"denoise.sigma_d={sigma_d:g} is invalid: must be in [{low:g}, {high:g}] (the noise's "
                         "standard deviation in normalised units, where the data have unit scale; the paper's is 1)")
    start = s.get("start", "observed")
    if start not in STARTS:
        raise ValueError(f"denoise.start={start!r} is unknown; valid choices: {list(STARTS)} (observed: the chain "
                         "starts at y as in the released code; prior: at a draw from pi)")
    n = common.positive_int("denoise.n", s.get("n", 100))
    common.held_out(dm, cfg.split, n, "denoise.n")
    n_samples = common.positive_int("denoise.n_samples", s.get("n_samples", 1))
    return {"sigma_d": sigma_d, "start": start, "n": n, "n_samples": n_samples,
            "over_t": common.check_r_over_t(cfg, ("constant", "tempered"))}


def run(module, dm, cfg: DictConfig, out_dir: Path, device: torch.device, s: dict) -> dict:
    diffusion, k = module.diffusion, s["n_samples"]
    x0 = common.held_out(dm, cfg.split, s["n"], "denoise.n").to(device)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    y = x0 + s["sigma_d"] * torch.randn(x0.shape, generator=g, device=device)
    y_k = y.repeat(k, *([1] * (y.dim() - 1)))  # the k posterior samples of image i are rows i, i + n, ...
    perturb = perturbation(diffusion, [GaussianR(y_k, s["sigma_d"] ** 2)], s["over_t"])
    samples, _ = sample(module, tuple(y_k.shape), g, "denoise", cfg.get("progress", True), perturb=perturb,
                        x_T=y_k if s["start"] == "observed" else None)
    samples = samples.reshape(k, *x0.shape)
    mse = lambda a: (a - x0).pow(2).mean().item()  # noqa: E731  per pixel, normalised units
    result = {"task": "denoise", "dataset": dm.name, "split": cfg.split, "n_examples": s["n"],
              "sigma_d": s["sigma_d"], "start": s["start"], "r_over_t": s["over_t"], "n_samples": k,
              "mse_noisy": mse(y), "mse_sample": sum(mse(x) for x in samples) / k}
    result["mse_sample_over_mse_noisy"] = result["mse_sample"] / result["mse_noisy"]
    lines = [f"denoise {dm.name}: {s['n']} {cfg.split} images, sigma_d = {s['sigma_d']}, start {s['start']}, "
             f"{k} posterior sample(s) each; mean squared error to the clean images per pixel (normalised units):",
             f"  noisy inputs y           {result['mse_noisy']:.4f}",
             f"  one posterior sample     {result['mse_sample']:.4f}  ({result['mse_sample_over_mse_noisy']:.3f} x noisy)"]
    if k > 1:
        result["mse_posterior_mean"] = mse(samples.mean(0))
        lines.append(f"  mean of {k} samples       {result['mse_posterior_mean']:.4f}  "
                     f"({result['mse_posterior_mean'] / result['mse_noisy']:.3f} x noisy)")
    common.save_npz(out_dir / "denoise.npz", x0=x0, y=y, samples=samples, shift=dm.shift, scale=dm.scale)
    rows = {"original": x0, f"observed y (sigma_d = {s['sigma_d']:g})": y, "posterior sample": samples[0]}
    if k > 1:
        rows[f"mean of {k} posterior samples"] = samples.mean(0)
    image_rows({label: dm.denormalize(x[:16]).cpu() for label, x in rows.items()}, out_dir / "denoise.png",
               f"{dm.name}: denoising, r = N(y, sigma_d^2) at every step, start {s['start']}")
    return common.finish(out_dir, "denoise", result, lines)
