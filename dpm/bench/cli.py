"""python -m dpm.bench's command line: parse, run what was asked, print the report, write the JSON."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch

from dpm.bench.floor import lightning_floor
from dpm.bench.harness import Bench
from dpm.bench.harness import __doc__ as HARNESS_DOC
from dpm.bench.presets import PRECISIONS, PRESETS, device_name
from dpm.bench.profile import PARTS, profile_module, profile_plain


def format_profile(r: dict) -> str:
    """The operator counts of one step, module against plain loop, split by part."""
    p = r["profile"]
    a, b = p["module"], p["plain"]
    lines = [f"operators per training step (dpm.bench.profile; {r['device_type']}, batch {r['batch']}, compile "
             f"{'on' if r['compile'] else 'off'}):",
             f"{'':<16}{'module (a)':>12}{'plain (b)':>12}{'(a)-(b)':>10}"]
    for part in (*PARTS, "total"):
        lines.append(f"{part:<16}{a[part]:>12}{b[part]:>12}{a[part] - b[part]:>10}")
    lines.append(f"everything else (not network, not optimizer): module {p['module_else']}, plain {p['plain_else']}; "
                 f"the module adds {p['added_fraction']:.1%} to the plain loop's total")
    if a.get("s_per_step") and b.get("s_per_step"):
        lines.append(f"CPU time per step, unprofiled ({p['timed_steps']} steps, a noisy figure under load): module "
                     f"{a['s_per_step'] * 1e3:.2f} ms, plain {b['s_per_step'] * 1e3:.2f} ms")
    return "\n".join(lines)


def run_profile(bench: Bench, args: argparse.Namespace) -> dict:
    """Operator counts of one step of each side (dpm.bench.profile)."""
    split = not args.compile
    module = profile_module(bench.module, bench.trainer, bench.dm, args.warmup, args.profile_steps, args.profile_timed,
                            split)
    plain = profile_plain(bench.plain, args.warmup, args.profile_steps, args.profile_timed, split)

    def rest(c: dict) -> int:
        return c["total"] - c["net_forward"] - c["net_backward"] - c["optimizer"]

    return {"module": module, "plain": plain, "module_else": rest(module), "plain_else": rest(plain),
            "added_fraction": module["total"] / plain["total"] - 1, "timed_steps": args.profile_timed}


def format_report(r: dict) -> str:
    lines = [f"dpm.bench: preset {r['preset']} on {r['device']} ({r['device_type']}), torch {r['torch']}, "
             f"lightning {r['lightning']}",
             f"precision {r['precision']}, compile {'on' if r['compile'] else 'off'}, channels_last "
             f"{'on' if r['channels_last'] else 'off'}, batch {r['batch']}, T {r['T']}, "
             f"{r['parameters'] / 1e6:.2f}M parameters"]
    header = f"{'':<18}{'module (a)':>14}{'plain (b)':>14}{'(a)/(b)':>10}   {'rounds: median (min..max)':<27}work"
    rows = []
    for key, label in (("train", "train images/s"), ("forward", "forward images/s")):
        m = r.get(key)
        if m:
            rows.append(f"{label:<18}{m['module_images_per_s']:>14,.0f}{m['plain_images_per_s']:>14,.0f}"
                        f"{m['ratio']:>10.3f}   {m['ratio_median']:.3f} ({m['ratio_min']:.3f}..{m['ratio_max']:.3f})"
                        f"{'':<6}{m['steps_per_side']} steps x {m['images_per_step']} per side")
    if rows:
        lines += [header, *rows]
    if r.get("profile"):
        lines.append(format_profile(r))
    if r.get("train"):
        m = r["train"]
        lines.append(f"fit setup {m['fit_setup_s']:.2f} s; warm-up {m['warmup_steps']} steps: module "
                     f"{m['warmup_module_s']:.2f} s, plain {m['warmup_plain_s']:.2f} s (not in the rates)")
    if r.get("bound"):
        b = r["bound"]
        how = ("measured" if b["complete"]
               else f"extrapolated from {b['terms_done']:,} of {b['n'] * (b['T'] - 1):,} terms")
        lines.append(f"exact bound, {b['n']:,} images at T = {b['T']} (batch {b['batch']}, {b['precision']}, keyed "
                     f"draws): {b['seconds_for_n']:.1f} s ({how}); {b['network_passes_per_s']:,.0f} network "
                     "passes/s")
    if r.get("floor"):
        f = r["floor"]
        lines.append(f"Lightning's loop alone (a one-parameter module, no logger, bar or checkpoints; {f['steps']} steps): "
                     f"{f['lightning_s_per_step'] * 1e6:.0f} us per step, plain loop {f['plain_s_per_step'] * 1e6:.0f} us")
    peaks = [f"{k} {r[k]['peak_memory_gib']:.2f} GiB" for k in ("train", "forward", "bound")
             if r.get(k) and r[k].get("peak_memory_gib") is not None]
    lines.append("peak memory: " + (", ".join(peaks) if peaks else f"process RSS {r['max_rss_gib']:.2f} GiB"))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dpm.bench", description=HARNESS_DOC.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="swiss_roll", choices=sorted(PRESETS))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    p.add_argument("--precision", default=None,
                   help=f"one of {list(PRECISIONS)}; default bf16-mixed on a GPU, 32-true on the CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile both sides: for training the whole per-example loss (the module as compile=true does), for the forward passes and the bound the network")
    p.add_argument("--channels-last", action="store_true", help="channels_last network weights (both sides)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the preset's)")
    p.add_argument("--steps", type=int, default=300, help="timed training steps per side")
    p.add_argument("--forward-steps", type=int, default=50, help="timed forward batches per side")
    p.add_argument("--forward-batch", type=int, default=None, help="examples per forward batch (default: the "
                   "preset's eval_batch_size); each is evaluated at val_n_t times")
    p.add_argument("--rounds", type=int, default=5, help="alternations of the two sides")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps of each side first")
    p.add_argument("--bound-n", type=int, default=1000, help="images for the exact bound (0: skip it)")
    p.add_argument("--bound-T", type=int, default=None, help="T for the exact bound (default: the preset's)")
    p.add_argument("--bound-batch", type=int, default=1000)
    p.add_argument("--bound-precision", default="32-true", choices=PRECISIONS,
                   help="evaluate.py's default is 32-true (TF32 matmuls on a GPU)")
    p.add_argument("--bound-max-seconds", type=float, default=None,
                   help="stop the bound after this long and extrapolate to --bound-n")
    p.add_argument("--seed", type=int, default=0, help="the keyed draws' seed for the bound")
    p.add_argument("--floor-steps", type=int, default=2000,
                   help="steps of Lightning's loop around a one-parameter module, against a plain loop (0: skip)")
    p.add_argument("--profile", action="store_true",
                   help="count the operators of one training step of each side, split by part (dpm.bench.profile), "
                        "instead of timing; deterministic, so a CPU run gives the GPU's launch count")
    p.add_argument("--profile-steps", type=int, default=5, help="steps profiled (after --warmup); the report "
                   "gives the step of median total")
    p.add_argument("--profile-timed", type=int, default=20, help="unprofiled steps timed after the profiled ones")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-forward", action="store_true")
    p.add_argument("--no-progress-bar", action="store_true", help="(a) without the progress bar")
    p.add_argument("--no-logger", action="store_true", help="(a) without the configured logger")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the preset, e.g. net.hidden=256")
    args = p.parse_args(argv)
    for key in ("steps", "rounds", "warmup"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1")
    if args.steps < args.rounds or args.forward_steps < args.rounds:
        p.error("--steps and --forward-steps must be at least --rounds")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dpm-bench-") as out_dir:
        bench = Bench(args, out_dir)
        result = {"preset": args.preset, "device": device_name(bench.device), "device_type": bench.device.type,
                  "torch": torch.__version__, "lightning": L.__version__, "precision": bench.precision,
                  "compile": args.compile, "channels_last": args.channels_last, "batch": bench.batch,
                  "T": int(bench.cfg.T), "val_n_t": bench.n_t,
                  "parameters": sum(p.numel() for p in bench.plain.net.parameters())}
        if args.profile:
            result["profile"] = run_profile(bench, args)
        elif not args.no_train:
            result["train"] = bench.train()
        if not args.no_forward and not args.profile:
            result["forward"] = bench.forward()
        if args.bound_n > 0 and not args.profile:
            result["bound"] = bench.bound()
        if args.floor_steps > 0 and not args.profile:
            result["floor"] = lightning_floor(bench.device, args.floor_steps)
    result["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(format_report(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
