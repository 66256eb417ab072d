"""task=constrain: samples of 2-D data under a smooth half-plane r(x) = sigmoid((x . n - offset) / width), applied
to first order at every step (Eq. 61: the mean moves by Sigma grad log r(mu)); n is a unit normal and the
half-plane {x . n > offset} is where r > 1/2. Distances are in normalised units (the data scaled to unit
variance)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from dpm.figures.posterior import half_plane_points
from dpm.core.posterior import SmoothR, check_factor, perturbation
from dpm.model.sampling import sample
from dpm.ranges import real, real_problem
from dpm.tasks import common


def half_plane_log_r(normal: torch.Tensor, offset: float, width: float):
    """log r(x) = log sigmoid((x . normal - offset) / width) for x [N, 2] -> [N]; normal [2] of unit length."""
    return lambda x: F.logsigmoid((x @ normal.to(x) - offset) / width)


def nearest_distance(x: torch.Tensor, data: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Euclidean distance from each x [N, D] to its nearest row of data [M, D]: [N]."""
    return torch.cat([torch.cdist(part, data).min(1).values for part in x.split(chunk)])


def check(cfg: DictConfig, dm, diffusion) -> dict:
    s = common.settings(cfg, "constrain")
    check_factor(diffusion, SmoothR, "constrain")
    if tuple(dm.data_shape) != (2,):
        raise ValueError(f"task=constrain needs 2-D points (the Swiss roll); {dm.name} has examples of shape "
                         f"{tuple(dm.data_shape)}")
    normal = list(s.get("normal", [1.0, 0.0]))
    if len(normal) != 2 or any(real_problem(v) for v in normal) or math.hypot(*normal) == 0:
        raise ValueError(f"constrain.normal={normal!r} is invalid: must be two finite numbers, not both 0")
    offset = real("constrain.offset", s.get("offset", 0.0))
    width = common.positive_float("constrain.width", s.get("width", 0.05), " (the softness of the edge)")
    tolerance = common.positive_float("constrain.tolerance", s.get("tolerance", 0.1))
    n = common.positive_int("constrain.n", s.get("n", 1000))
    unit = torch.tensor(normal, dtype=torch.float32) / math.hypot(*normal)
    return {"normal": unit, "offset": float(offset), "width": width, "tolerance": tolerance, "n": n,
            "over_t": common.check_r_over_t(cfg, ("constant", "tempered"))}


def run(module, dm, cfg: DictConfig, out_dir: Path, device: torch.device, s: dict) -> dict:
    diffusion, shape = module.diffusion, (s["n"], 2)
    log_r = half_plane_log_r(s["normal"].to(device), s["offset"], s["width"])
    perturb = perturbation(diffusion, [SmoothR(log_r)], s["over_t"])
    enabled = cfg.get("progress", True)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    plain, _ = sample(module, shape, g, "plain samples", enabled)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    samples, _ = sample(module, shape, g, "constrain", enabled, perturb=perturb)
    train = dm.splits["train"].to(device)

    def fractions(x: torch.Tensor) -> dict:
        inside = x @ s["normal"].to(x) > s["offset"]
        near = nearest_distance(x, train) <= s["tolerance"]
        return {"in_half_plane": inside.float().mean().item(), "on_data": near.float().mean().item(),
                "both": (inside & near).float().mean().item()}

    result = {"task": "constrain", "dataset": dm.name, "n_samples": s["n"], "normal": s["normal"].tolist(),
              "offset": s["offset"], "width": s["width"], "tolerance": s["tolerance"], "r_over_t": s["over_t"],
              "constrained": fractions(samples), "plain": fractions(plain)}
    common.save_npz(out_dir / "constrain.npz", samples=samples, plain=plain, normal=s["normal"], offset=s["offset"],
                    width=s["width"])
    half_plane_points(train[:5000].cpu(), plain.cpu(), samples.cpu(), s["normal"], s["offset"],
                      out_dir / "constrain.png", f"{dm.name}: half-plane r, width {s['width']:g}, "
                      f"r over t {s['over_t']}")
    lines = [f"constrain {dm.name}: {s['n']} samples, half-plane x . {s['normal'].tolist()} > {s['offset']:g}, "
             f"edge width {s['width']:g}; on the data = within {s['tolerance']:g} of a training point",
             f"{'':<14}{'in half-plane':>15}{'on the data':>13}{'both':>8}"]
    for name in ("plain", "constrained"):
        f = result[name]
        lines.append(f"{name:<14}{100 * f['in_half_plane']:>14.1f}%{100 * f['on_data']:>12.1f}%"
                     f"{100 * f['both']:>7.1f}%")
    return common.finish(out_dir, "constrain", result, lines)
