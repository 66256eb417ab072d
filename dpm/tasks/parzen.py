"""task=parzen: the Parzen-window log-likelihood of the paper's Table 2 (dpm.core.parzen), for the model's samples and
for the "perfect model" (training images in place of samples), printed beside the paper's MNIST rows."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig

from dpm.figures.parzen import parzen_figure
from dpm.core.paper import TABLE2_MNIST_BITS
from dpm.core.parzen import choose_sigma, parzen_log_likelihood, sigma_grid
from dpm.core.stats import mean_and_stderr
from dpm.io.progress import Progress
from dpm.model.sampling import sample
from dpm.ranges import integer_problem, real_problem
from dpm.tasks import common

LN2 = math.log(2.0)


def check(cfg: DictConfig, dm, diffusion) -> dict:
    s = common.settings(cfg, "parzen")
    if dm.kind.data != "image" or dm.kind.classes is not None:
        raise ValueError(f"task=parzen needs image data (pixel values in [0, 1]); {dm.name} is not "
                         "(use dataset=mnist5k, mnist or digits)")
    if getattr(dm, "n_levels", None) is None:  # the estimate snaps pixels back onto their grid of levels
        raise ValueError(f"task=parzen needs images on a grid of grey levels (pixel values k / (n_levels - 1)); "
                         f"{dm.origin} holds continuous values (dataset.n_levels was null): train with "
                         "dataset.n_levels=<levels> for integer-valued images")
    n_samples = common.positive_int("parzen.n_samples", s.get("n_samples", 10000))
    n_val = common.positive_int("parzen.n_val", s.get("n_val", 1000))
    n_test = s.get("n_test")
    n_test = len(dm.splits["test"]) if n_test is None else common.positive_int("parzen.n_test", n_test)
    common.held_out(dm, "test", n_test, "parzen.n_test")
    grid = list(s.get("sigma_logspace", [-1.0, 0.0, 10]))
    if len(grid) != 3 or real_problem(grid[0]) or real_problem(grid[1]) or integer_problem(grid[2], 1):
        raise ValueError(f"parzen.sigma_logspace={grid!r} is invalid: must be [start, end, steps] for "
                         "torch.logspace (the estimator's is [-1, 0, 10])")
    chunk = common.positive_int("parzen.chunk", s.get("chunk", 250))
    batch = common.positive_int("batch_size", cfg.get("batch_size", 1000))
    return {"n_samples": n_samples, "n_val": min(n_val, len(dm.splits["val"])), "n_test": n_test,
            "sigmas": sigma_grid(*grid), "chunk": chunk, "batch": batch}


def pixels(dm, x: torch.Tensor) -> torch.Tensor:
    """Data (normalised) -> its raw pixel values in [0, 1], snapped back onto the n_levels grid it came from."""
    levels = dm.n_levels - 1
    return torch.round(dm.denormalize(x.cpu()).clamp(0, 1) * levels) / levels


def draw_samples(module, dm, n: int, batch: int, seed: int, enabled: bool) -> torch.Tensor:
    """n model samples as pixel values in [0, 1] (x * scale + shift, clipped), [n, C, H, W] float32 on the CPU."""
    g = torch.Generator(device=module.device).manual_seed(seed)
    x0, _ = sample(module, (n, *dm.data_shape), g, f"parzen: {n} samples", enabled, batch=batch)
    return dm.denormalize(x0.float()).clamp(0, 1).cpu()


def estimate(kernel_points: torch.Tensor, val: torch.Tensor, test: torch.Tensor, s: dict, bar: Progress,
             device: torch.device) -> dict:
    """sigma by the best mean validation log-likelihood, then the test log-likelihoods at that sigma."""
    kernel_points = kernel_points.to(device)
    sigma, curve = choose_sigma(val.to(device), kernel_points, s["sigmas"].to(device), chunk_x=s["chunk"],
                                on_step=bar.update)
    ll = parzen_log_likelihood(test.to(device), kernel_points, sigma, chunk_x=s["chunk"], on_step=bar.update)[0]
    mean, se = mean_and_stderr(ll, ddof=0)  # ddof 0: Goodfellow et al.'s estimator, `ll.std() / numpy.sqrt(N)`
    return {"sigma": sigma, "ll_nats": mean, "ll_nats_stderr": se, "ll_bits": mean / LN2,
            "ll_bits_stderr": se / LN2, "val_curve": curve.cpu(), "ll": ll.cpu()}


def run(module, dm, cfg: DictConfig, out_dir: Path, device: torch.device, s: dict) -> dict:
    enabled = cfg.get("progress", True)
    samples = draw_samples(module, dm, s["n_samples"], s["batch"], cfg.seed, enabled)
    val, test = pixels(dm, dm.splits["val"][: s["n_val"]]), pixels(dm, dm.splits["test"][: s["n_test"]])
    train = pixels(dm, dm.splits["train"][: s["n_samples"]])
    with Progress(2 * (len(val) + len(test)), "parzen: log-likelihoods", unit="image", enabled=enabled) as bar:
        rows = {"model": estimate(samples, val, test, s, bar, device),
                "perfect model": estimate(train, val, test, s, bar, device)}
    D = math.prod(dm.data_shape)
    result = {"task": "parzen", "dataset": dm.name, "n_samples": len(samples), "n_train_images": len(train),
              "n_val": len(val), "n_test": len(test), "dims": D, "sigmas": s["sigmas"].tolist(),
              **{name.replace(" ", "_"): {k: v for k, v in row.items() if k not in ("val_curve", "ll")}
                 | {"val_curve_nats": row["val_curve"].tolist()} for name, row in rows.items()},
              "paper_table2_mnist_bits": TABLE2_MNIST_BITS}
    common.save_npz(out_dir / "parzen.npz", samples=samples, sigmas=s["sigmas"],
                    **{f"{name.replace(' ', '_')}_{k}": row[k] for name, row in rows.items()
                       for k in ("val_curve", "ll")})
    parzen_figure(samples, train, s["sigmas"], {f"{n} (sigma = {r['sigma']:.3f})": r["val_curve"]
                                                for n, r in rows.items()},
                  out_dir / "parzen.png", f"{dm.name}: Parzen window, {len(samples)} samples, D = {D}")
    lines = [f"Parzen-window log-likelihood, {dm.name} {len(test)} test images (D = {D}, pixels in [0, 1]); sigma "
             f"from {len(val)} val images",
             f"{'':<40}{'bits':>18}{'nats':>18}{'sigma':>8}"]
    for name, count in (("model", f"{len(samples)} samples"), ("perfect model", f"{len(train)} training images")):
        r = rows[name]
        lines.append(f"{name + ' (' + count + ')':<40}{r['ll_bits']:>10.1f} ± {r['ll_bits_stderr']:<5.1f}"
                     f"{r['ll_nats']:>10.1f} ± {r['ll_nats_stderr']:<5.1f}{r['sigma']:>8.3f}")
    lines.append(f"paper, Table 2 (MNIST, D = 784, bits){'' if dm.name.startswith('mnist') else ' - other data'}:")
    lines += [f"  {name:<38}{mean:>10.0f} ± {se:<5.1f}" for name, (mean, se) in TABLE2_MNIST_BITS.items()]
    return common.finish(out_dir, "parzen", result, lines)
