"""task=complete: given the first k bins of held-out sequences, sample the rest; r a delta on the known bins
(exact for both kinds, docs/paper.md §6.1), as the paper's clamp (complete.particles=1, r_over_t) or by SMC over
complete.particles > 1 particles (SMCDiff, Trippe et al. 2022, dpm.core.smc; not in the paper). On the heartbeat, a
completion is right when it is the one training pattern (or one of those) whose first k bins agree with the
given ones."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from dpm.figures.posterior import sequence_rows
from dpm.ranges import count
from dpm.core.posterior import DeltaR, check_factor
from dpm.tasks import common


def check(cfg: DictConfig, dm, diffusion) -> dict:
    s = common.settings(cfg, "complete")
    check_factor(diffusion, DeltaR, "complete")
    if dm.kind.data != "sequence":
        raise ValueError(f"task=complete needs sequence data [N, length] (the heartbeat, your own 0/1 sequences); "
                         f"{dm.name} holds {dm.kind.data} of shape {tuple(dm.data_shape)} (task=inpaint fills "
                         "images, task=constrain conditions 2-D points)")
    length = dm.data_shape[0]
    k = count("complete.k", s.get("k", 5), 1, length, why=" (the given bins, at most the sequence length)")
    n = common.positive_int("complete.n", s.get("n", 1000))
    common.held_out(dm, cfg.split, n, "complete.n")
    over_t = common.check_r_over_t(cfg)
    smc = common.check_particles(cfg, "complete", over_t)
    common.check_smc_memory(cfg, "complete", n, tuple(dm.data_shape), smc["particles"])
    return {"k": k, "n": n, "over_t": over_t, **smc}


def consistent(completions: torch.Tensor, given: torch.Tensor, patterns: torch.Tensor, k: int) -> torch.Tensor:
    """bool [N]: completion i [length] is one of the patterns [P, length] whose first k bins equal given[i]."""
    agrees = (given[:, None, :k] == patterns[None, :, :k]).all(2)  # [N, P]: pattern j fits the given bins
    equals = (completions[:, None] == patterns[None]).all(2)  # [N, P]: completion i is pattern j
    return (agrees & equals).any(1)


def run(module, dm, cfg: DictConfig, out_dir: Path, device: torch.device, s: dict) -> dict:
    k = s["k"]
    x0 = common.held_out(dm, cfg.split, s["n"], "complete.n").to(device)
    known = torch.zeros_like(x0, dtype=torch.bool)
    known[:, :k] = True
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    filled = common.fill_known(module, x0, known, s, g, "complete", cfg.get("progress", True))
    result = filled.x0
    exact = bool(torch.equal(result[:, :k], x0[:, :k]))
    out = {"task": "complete", "dataset": dm.name, "split": cfg.split, "n_examples": s["n"], "k": k,
           **filled.record, "known_bins_exact": exact}
    lines = [f"complete {dm.name}: {s['n']} {cfg.split} sequences given their first {k} bins", *filled.lines,
             f"given bins kept exactly: {exact}"]
    patterns = dm.patterns
    if patterns is not None:
        ok = consistent(result, x0, patterns.to(result), k)
        n_fit = (x0[:, None, :k] == patterns.to(x0)[None, :, :k]).all(2).sum(1).float()
        out.update(fraction_consistent=ok.float().mean().item(), patterns_consistent_per_example=n_fit.mean().item())
        lines.append(f"completions that are a pattern consistent with the given bins: "
                     f"{100 * out['fraction_consistent']:.1f}% (patterns consistent per example: "
                     f"{out['patterns_consistent_per_example']:.2f})")
    common.save_npz(out_dir / "complete.npz", x0=x0, known=known, result=result, **filled.arrays)
    observed = torch.where(known, x0, torch.full_like(x0, float("nan")))
    sequence_rows({"original": x0[:20], f"given: first {k} bins (grey unknown)": observed[:20],
                   "completion": result[:20]}, out_dir / "complete.png",
                  f"{dm.name}: completion given the first {k} bins, {filled.method}", dm.kind.classes)
    return common.finish(out_dir, "complete", out, lines)
