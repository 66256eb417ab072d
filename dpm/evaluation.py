"""The bound K over a data split, as evaluate.py and the end of training compute it: per-example K with its
standard error, eval.json (DESIGN.md contract 3) and a table beside the paper's Table 1, with progress."""

from __future__ import annotations

import math
import time

import torch

from dpm.bound import ESTIMATORS, mean_and_stderr
from dpm.checks import ConfigError
from dpm.data.base import DataModule
from dpm.keyed import Keys
from dpm.module import DiffusionModule
from dpm.paper import TABLE1
from dpm.progress import Progress, announce, time_per_call
from dpm.truth import truth_fields


def split_size(dm: DataModule, split: str, limit: int | None) -> int:
    dm.setup()
    n = len(dm.splits[split])
    return n if limit is None else min(n, limit)


def estimate_seconds(module: DiffusionModule, x0: torch.Tensor, estimator: str, n_t: int, n: int) -> float:
    """Seconds the bound over n examples will take, from a timed warm-up of one KL term on the first batch x0
    [B, *D] (exact: n / B x (T - 1) such calls; mc: n / B calls of B x n_t examples)."""
    diffusion, net = module.diffusion, module.net
    b, T = x0.shape[0], diffusion.T
    reps = n_t if estimator == "mc" else 1
    xb = x0.repeat(reps, *([1] * (x0.dim() - 1)))
    t = torch.full((len(xb),), max(2, T // 2), device=x0.device, dtype=torch.long)
    sync = torch.cuda.synchronize if x0.device.type == "cuda" else None
    per_call = time_per_call(lambda: diffusion.kl_term(net, xb, t), n=2, sync=sync)
    calls = (T - 1) if estimator == "exact" else 1
    return per_call * calls * n / b


def bound_over_split(module: DiffusionModule, dm: DataModule, *, split: str = "test", estimator: str = "exact",
                     n_t: int = 16, batch_size: int = 1000, limit: int | None = None, seed: int = 0,
                     device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """K per example over a split (or its first `limit` examples), summarised as eval.json's fields."""
    if estimator not in ESTIMATORS:
        raise ConfigError(f"estimator={estimator!r} is unknown; valid choices: {list(ESTIMATORS)}")
    T = module.diffusion.T
    if estimator == "mc" and not 1 <= n_t <= T - 1:
        raise ConfigError(f"n_t={n_t} is invalid: between 1 and T - 1 = {T - 1} draws of t per example")
    n = split_size(dm, split, limit)
    terms = T - 1 if estimator == "exact" else n_t
    start = time.perf_counter()
    Ks, L_nulls, truths = [], [], []
    with torch.no_grad(), Progress(n * terms, f"{estimator} bound", unit="term", enabled=progress) as bar:
        for x0, index in dm.loader(split, batch_size, rank=0, world=1):
            if index[0] >= n:
                break
            x0, index = x0[: n - int(index[0])].to(device), index[: n - int(index[0])].to(device)
            keys = Keys(seed, index)  # each example's t, noise and dequantisation: the same in any batch
            x0 = dm.dequantize(x0, keys=keys)
            if not Ks and progress:
                seconds = estimate_seconds(module, x0, estimator, n_t, n)
                announce(f"{estimator} bound: {n:,} examples x {terms:,} terms on {torch.device(device).type}",
                         seconds)
            K, L_null = module.bound(x0, estimator, n_t, on_terms=bar.update, keys=keys)
            Ks.append(K.cpu())
            L_nulls.append(L_null.cpu())
            truth = dm.true_log_likelihood(x0)  # nats per example; None where the density is unknown
            if truth is not None:
                truths.append(module.to_units(truth).cpu())
            mean, se = mean_and_stderr(torch.cat(Ks))
            bar.update(0, K=f"{mean:.3f} ± {se:.3f} {dm.unit}")
    K, L_null = torch.cat(Ks), torch.cat(L_nulls)
    K_mean, K_se = mean_and_stderr(K)
    gain_mean, gain_se = mean_and_stderr(K - L_null)
    K_bpd = K_mean * dm.units_per_example / math.prod(dm.data_shape)
    result = {
        "dataset": dm.name, "diffusion": module.diffusion.kind, "T": T, "split": split,
        "estimator": estimator, "n_t": n_t if estimator == "mc" else T - 1,
        "n_examples": int(K.numel()), "K": K_mean, "K_stderr": K_se, "L_null": L_null.double().mean().item(),
        "K_minus_L_null": gain_mean, "K_minus_L_null_stderr": gain_se, "unit": dm.unit,
        "K_bits_per_dim": K_bpd, "seconds": time.perf_counter() - start,
    }
    if truths:  # the data's density is known (heartbeat, noisy Swiss roll): K beside it, paired (dpm.truth)
        result.update(truth_fields(K, torch.cat(truths)))
    nll8 = dm.nll_bits_per_dim_8bit(K_bpd)
    if nll8 is not None:
        result["nll_bits_per_dim_8bit"] = nll8
    result.update(dm.eval_info())
    return result


def format_table(r: dict) -> str:
    """The result beside the paper's Table 1 value, as a short text table."""
    paper = TABLE1.get(r["dataset"], {})
    ref = lambda key: f"{paper[key]:>10.3f}" if key in paper else f"{'-':>10}"  # noqa: E731
    lines = [
        f"{r['dataset']}: {r['diffusion']} diffusion, T={r['T']}, {r['split']} split, {r['estimator']} estimator, "
        f"{r['n_examples']} examples, {r.get('weights', 'raw')} weights, {r['seconds']:.1f} s",
        f"{'':<16}{'ours':>22}{'paper':>12}   unit",
        f"{'K':<16}{r['K']:>12.3f} ± {r['K_stderr']:<7.3f}{ref('K'):>12}   {r['unit']}",
        f"{'K - L_null':<16}{r['K_minus_L_null']:>12.3f} ± {r['K_minus_L_null_stderr']:<7.3f}"
        f"{ref('K_minus_L_null'):>12}   {r['unit']}",
        f"{'L_null':<16}{r['L_null']:>12.3f}{'':>22}   {r['unit']}",
        f"{'K per dim':<16}{r['K_bits_per_dim']:>12.4f}{'':>22}   bits/dim",
    ]
    if "true_log_likelihood" in r:
        lines.append(f"{'truth':<16}{r['true_log_likelihood']:>12.3f}{'':>22}   {r['unit']}")
        lines.append(f"{'K - truth':<16}{r['gap_to_truth']:>12.3f} ± {r['gap_to_truth_stderr']:<7.3f}"
                     f"{'':>12}   {r['unit']}")
    if "nll_bits_per_dim_8bit" in r:
        lines.append(f"{'NLL 8-bit':<16}{r['nll_bits_per_dim_8bit']:>12.4f}{'':>22}   bits/dim (lower is better)")
    return "\n".join(lines)
