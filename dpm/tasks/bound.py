"""task=bound, and the end of training: K over a data split with its standard error, with progress, written to
eval.json (docs/contracts.md, contract 3) and printed beside the paper's Table 1 by one function (write_bound)."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig

from dpm.core.bound import ESTIMATORS
from dpm.core.stats import mean_and_stderr
from dpm.errors import ConfigError, RunFailed
from dpm.data.base import DataModule
from dpm.core.keyed import Keys
from dpm.model.module import DiffusionModule
from dpm.core.paper import TABLE1
from dpm.io.files import write_json
from dpm.io.progress import Progress, announce, time_per_call
from dpm.ranges import count
from dpm.tasks.provenance import provenance
from dpm.core.truth import truth_fields
from dpm.tasks.baselines import baseline_fields, baseline_lines
from dpm.tasks.weights import chosen_fields, weights_lines


def check(cfg: DictConfig, dm: DataModule, diffusion) -> dict:
    """The bound's settings (conf/task/bound.yaml): estimator, n_t (draws of t per example for mc, 1..T - 1) and
    limit; split and batch_size are shared by the tasks (conf/evaluate.yaml)."""
    estimator, n_t, limit = cfg.get("estimator", "exact"), cfg.get("n_t", 16), cfg.get("limit")
    if estimator not in ESTIMATORS:
        raise ConfigError(f"estimator={estimator!r} is unknown; valid choices: {list(ESTIMATORS)}")
    T = diffusion.T
    n_t = count("n_t", n_t, 1, T - 1 if estimator == "mc" else None,
                why=f" (the draws of t per example for estimator=mc; T - 1 = {T - 1})")
    limit = count("limit", limit, 1, allow=(None,), why=" (examples; null: the whole split)")
    return {"estimator": estimator, "n_t": n_t, "limit": limit}


def run(module: DiffusionModule, dm: DataModule, cfg: DictConfig, out_dir: Path, device: torch.device, s: dict,
        fabric=None) -> dict:
    """K on cfg.split with the weights cfg.weights names (as restored), on the processes of a launched Fabric or
    one; rank 0 writes eval.json."""
    result = bound_over_split(module, dm, split=cfg.split, estimator=s["estimator"], n_t=s["n_t"],
                              batch_size=cfg.batch_size, limit=s["limit"], seed=cfg.seed, device=device,
                              progress=cfg.get("progress", True), fabric=fabric)
    result.update(weights=cfg.weights, checkpoint=str(cfg.ckpt_path),
                  processes=fabric.world_size if fabric is not None else 1, **chosen_fields(cfg))
    if fabric is not None and fabric.global_rank != 0:
        return result
    return {**result, "eval": str(write_bound(result, out_dir))}


def write_bound(result: dict, out_dir: Path) -> Path:
    """out_dir/eval.json (atomically) and the table beside the paper's printed: the one writer of eval.json, for
    evaluate.py task=bound and the end of training."""
    path = write_json(Path(out_dir) / "eval.json", result)
    print(format_table(result))
    return path


def split_size(dm: DataModule, split: str, limit: int | None) -> int:
    dm.setup()
    n = len(dm.splits[split])
    return n if limit is None else min(n, limit)


def estimate_seconds(module: DiffusionModule, x0: torch.Tensor, keys: Keys, estimator: str, n_t: int, n: int) -> float:
    """Seconds the bound over n examples will take, from timed calls of one KL term on the first batch x0 [B, *D]
    with its keyed draws, as the estimators make them: (T - 1) such calls per batch for exact, n_t for mc."""
    diffusion, net = module.diffusion, module.net
    b, T = x0.shape[0], diffusion.T
    t = torch.full((b,), max(2, T // 2), device=x0.device, dtype=torch.long)
    sync = torch.cuda.synchronize if x0.device.type == "cuda" else None
    per_call = time_per_call(lambda: diffusion.kl_term(net, x0, t, keys=keys), sync=sync)
    calls = (T - 1) if estimator == "exact" else n_t
    return per_call * calls * n / b


def bound_over_split(module: DiffusionModule, dm: DataModule, *, split: str = "test", estimator: str = "exact",
                     n_t: int = 16, batch_size: int = 1000, limit: int | None = None, seed: int = 0,
                     device: torch.device | str = "cpu", progress: bool = True, fabric=None) -> dict:
    """K per example over a split (or its first `limit` examples), summarised as eval.json's fields.

    With a launched lightning.fabric.Fabric (evaluate.py devices=N) each of its processes takes its own shard of
    the examples (no padding, none twice) with batch_size // N per batch, and the per-example values are gathered
    by example index: the draws are keyed by (seed, index), so K is the same for any number of processes and any
    batch size. Every process returns the summary; only rank 0 shows progress."""
    start = time.perf_counter()
    table = per_example_bound(module, dm, split=split, estimator=estimator, n_t=n_t, batch_size=batch_size,
                              limit=limit, seed=seed, device=device, progress=progress, fabric=fabric)
    return summarize(module, dm, table, split=split, estimator=estimator, n_t=n_t,
                     seconds=time.perf_counter() - start)


def per_example_bound(module: DiffusionModule, dm: DataModule, *, split: str = "test", estimator: str = "exact",
                      n_t: int = 16, batch_size: int = 1000, limit: int | None = None, seed: int = 0,
                      device: torch.device | str = "cpu", progress: bool = True, fabric=None) -> torch.Tensor:
    """The rows [N, 4] that bound_over_split summarises, sorted by example index: index, K, L_null and the truth
    (NaN where the density is unknown), in the reporting unit."""
    T = module.diffusion.T
    rank, world = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
    n = split_size(dm, split, limit)
    terms = T - 1 if estimator == "exact" else n_t
    rows = []  # [B, 4] per batch: index, K, L_null, truth (NaN where the density is unknown)
    show = progress and rank == 0
    mine = len(range(rank, n, world))  # this process's examples (ShardBatches)
    with torch.no_grad(), Progress(mine * terms, f"{estimator} bound", unit="term", enabled=show) as bar:
        for x0, index in dm.loader(split, batch_size, rank=rank, world=world):
            keep = index < n
            if not keep.any():
                break
            x0, index = x0[keep].to(device), index[keep].to(device)
            keys = Keys(seed, index)  # each example's t, noise and dequantisation: the same in any batch
            x0 = dm.dequantize(x0, keys=keys)
            if not rows and show:
                seconds = estimate_seconds(module, x0, keys, estimator, n_t, mine)
                announce(f"{estimator} bound: {n:,} examples x {terms:,} terms on {torch.device(device).type}"
                         + (f", {world} processes" if world > 1 else ""), seconds)
            K, L_null = module.bound(x0, estimator, n_t, on_terms=bar.update, keys=keys)
            truth = dm.true_log_likelihood(x0)  # nats per example; None where the density is unknown
            truth = module.to_units(truth) if truth is not None else torch.full_like(K, float("nan"))
            rows.append(torch.stack([index.double(), K.double(), L_null.double(), truth.double().to(K.device)], 1))
            mean, se = mean_and_stderr(torch.cat([r[:, 1] for r in rows]), ddof=1)
            bar.update(0, K=f"{mean:.3f} ± {se:.3f} {dm.kind.unit}")
    table = torch.cat(rows) if rows else torch.zeros(0, 4, dtype=torch.float64, device=device)
    return gather_by_index(fabric, table, n) if fabric is not None else table


def gather_by_index(fabric, table: torch.Tensor, n: int) -> torch.Tensor:
    """Every process's rows [m_r, C] (column 0 the example index) gathered on every process and sorted by index:
    [n, C]. Each shard is padded to ceil(n / world) rows with index -1 so that the collective sees equal shapes
    (lightning's all_gather); the padding is dropped, and a missing or repeated index is an error."""
    width = math.ceil(n / fabric.world_size)
    padded = table.new_full((width, table.shape[1]), float("nan"))
    padded[:, 0] = -1
    padded[: len(table)] = table
    with warnings.catch_warnings():  # Lightning 2.6 calls a collective that torch >= 2.9 deprecates
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated")
        rows = fabric.all_gather(padded.to(fabric.device)).reshape(-1, table.shape[1]).cpu()
    rows = rows[rows[:, 0] >= 0]
    rows = rows[torch.argsort(rows[:, 0])]
    if not torch.equal(rows[:, 0], torch.arange(n, dtype=rows.dtype)):
        raise RuntimeError(f"the processes returned {len(rows)} examples for {n}: some index is missing or repeated")
    return rows


def summarize(module: DiffusionModule, dm: DataModule, table: torch.Tensor, *, split: str, estimator: str,
              n_t: int, seconds: float) -> dict:
    """eval.json's fields from the per-example rows [N, 4] (index, K, L_null, truth; in the reporting unit)."""
    T = module.diffusion.T
    K, L_null, truth = table[:, 1].cpu(), table[:, 2].cpu(), table[:, 3].cpu()
    K_mean, K_se = mean_and_stderr(K, ddof=1)
    if not math.isfinite(K_mean):  # a diverged model: no eval.json that a sweep or a reader would take as a bound
        bad = int((~torch.isfinite(K)).sum())
        raise RunFailed(f"the bound on the {split} split is not finite (K = {K_mean}): {bad} of {K.numel()} examples "
                        "gave a non-finite value, so the weights are unusable (a diverged run: try a lower "
                        "optimizer.lr); no eval.json was written")
    gain_mean, gain_se = mean_and_stderr(K - L_null, ddof=1)
    K_bpd = K_mean * dm.kind.units_per_example / math.prod(dm.data_shape)
    result = {
        "dataset": dm.name, "diffusion": module.diffusion.kind, "T": T, "split": split,
        "estimator": estimator, "n_t": n_t if estimator == "mc" else T - 1,
        "n_examples": int(K.numel()), "K": K_mean, "K_stderr": K_se, "L_null": L_null.mean().item(),
        "K_minus_L_null": gain_mean, "K_minus_L_null_stderr": gain_se, "unit": dm.kind.unit,
        "K_bits_per_dim": K_bpd, "seconds": seconds,
    }
    if not truth.isnan().all():  # the data's density is known (heartbeat, noisy Swiss roll): K beside it, paired
        result.update(truth_fields(K, truth))
    nll8 = dm.nll_bits_per_dim_8bit(K_bpd)
    if nll8 is not None:
        result["nll_bits_per_dim_8bit"] = nll8
    result.update(dm.eval_info())
    result["provenance"] = provenance(module, dm)  # where the number came from (dpm.tasks.provenance)
    log2_jacobian = dm.raw_log2_jacobian()
    if log2_jacobian is not None:  # the bound on the data as the user gave them (dpm.data.base.DataModule)
        result.update(K_raw=K_mean - log2_jacobian, K_raw_stderr=K_se)
    result.update(baseline_fields(dm, split, table[:, 0], K, log2_jacobian))  # the obvious models, same examples
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
    if "K_raw" in r:
        lines.append(f"{'K (raw data)':<16}{r['K_raw']:>12.3f} ± {r['K_raw_stderr']:<7.3f}{'':>12}   {r['unit']}")
    if "nll_bits_per_dim_8bit" in r:
        lines.append(f"{'NLL 8-bit':<16}{r['nll_bits_per_dim_8bit']:>12.4f}{'':>22}   bits/dim (lower is better)")
    lines += weights_lines(r) + baseline_lines(r)
    return "\n".join(lines)
