"""python -m dpm.report DIR [DIR ...] [--out DIR] [--wandb]: one table and one plot for a sweep.

Reads every training run under the given directories (a Hydra multirun directory, or run directories): its
config.yaml, .hydra/overrides.yaml, .hydra/job.json (dpm.sweeps.jobs.SweepJobs), eval.json, logs/metrics.csv and
checkpoints. Writes report.md, report.csv and report.png (K +- 2 standard errors per run, grouped by the swept keys)
into --out (default: the first DIR) and prints the Markdown table.

K comes from the run's own eval.json (train, then test); failing that, from an eval.json in a subdirectory of the
run (python evaluate.py ... hydra.run.dir=<run>/eval); failing that, from the last val/K in metrics.csv (the
validation's Monte Carlo estimate). The column "K from" says which. Status: complete, incomplete (still running,
or stopped without an error: resumable) or failed (the job raised; its error is in the last column).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from dpm.app.wandb_offline import online_without_credentials
from dpm.core.stats import mean_and_stderr
from dpm.io.files import write_text
from dpm.sweeps.runs import NUMBERS, PROVENANCE, config_differences, fill_units, find_runs, read_run
from dpm.sweeps.jobs import sweep_name


def swept_keys(rows: list[dict]) -> list[str]:
    """The override keys whose values differ between runs (or that only some runs set), in first-seen order."""
    keys = list(dict.fromkeys(k for row in rows for k in row["overrides"]))
    return [k for k in keys if len({row["overrides"].get(k) for row in rows}) > 1]


def mean_se(values: list[float | None]) -> tuple[float, float]:
    """Mean and standard error over runs (ddof 1) of the finite values: a run without the number is left out."""
    return mean_and_stderr([v for v in values if v is not None and math.isfinite(v)], ddof=1)


def groups(rows: list[dict], keys: list[str]) -> dict[tuple, list[dict]]:
    """Complete runs with a K, grouped by the swept keys other than the seed."""
    by: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["status"] == "complete" and row.get("K") is not None:
            by.setdefault(tuple(row["overrides"].get(k) for k in keys if k != "seed"), []).append(row)
    return by


def summary(rows: list[dict], keys: list[str]) -> list[dict]:
    """Per group: the mean K over its runs (seeds) with the standard error over runs, the mean gap to the truth,
    and the difference from the first group paired by seed (mean and standard error of the per-seed differences)."""
    by = groups(rows, keys)
    base = next(iter(by.values()), [])
    base_by_seed = {r["overrides"].get("seed"): r["K"] for r in base}
    out = []
    for key, members in by.items():
        K, K_se = mean_se([r["K"] for r in members])
        gap, gap_se = mean_se([r.get("gap_to_truth") for r in members])
        diffs = [r["K"] - base_by_seed[r["overrides"].get("seed")] for r in members
                 if r["overrides"].get("seed") in base_by_seed]
        d, d_se = mean_se(diffs) if members is not base and "seed" in keys else (math.nan, math.nan)
        label = ", ".join(f"{k}={'-' if v is None else v}" for k, v in zip([k for k in keys if k != "seed"], key))
        out.append({"group": label or "all",
                    "n": len(members), "K": K, "K_se": K_se, "gap": gap, "gap_se": gap_se,
                    "diff": d, "diff_se": d_se, "n_pairs": len(diffs) if members is not base else 0})
    return out


def _pm(mean, se, digits: int = 3) -> str:
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None and math.isfinite(se) else "")


def _baseline(r: dict) -> str:
    """K minus the best baseline of the run's eval.json, and which baseline (contract 12)."""
    cell = _pm(r.get("K_minus_best_baseline"), r.get("K_minus_best_baseline_stderr"))
    return cell + (f" ({r['best_baseline'].replace('_', ' ')})" if cell != "-" and r.get("best_baseline") else "")



def _weights(r: dict) -> str:
    """'best validation: ema, step 4000 (1a2b3c4d5e6f)' from the row's provenance, '-' without one."""
    if not r.get("weights"):
        return "-"
    step = f", step {r['checkpoint_step']}" if r.get("checkpoint_step") is not None else ""
    sha = f" ({r['checkpoint_sha256'][:12]})" if r.get("checkpoint_sha256") else ""
    chosen = f"{r['weights_chosen']}: " if r.get("weights_chosen") else ""
    return f"{chosen}{r['weights']}{step}{sha}"


def _data(r: dict) -> str:
    """The data's identity, shortened (a sha256 to 12 characters), flagged when it is not what the model saw."""
    data = r.get("data")
    if not data:
        return "-"
    shown = data[:12] if len(data) == 64 else data
    return shown + (" (not the training data)" if r.get("data_as_trained") is False else "")


def _time(seconds) -> str:
    return "-" if seconds is None else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def markdown(rows: list[dict], keys: list[str]) -> str:
    """The per-run table and the per-group summary, in Markdown."""
    unit = next((r["unit"] for r in rows if r.get("unit")), "")
    head = ["run", *keys, "status", f"K ({unit or 'unit of the data'})", "K - L_null", "truth", "K - truth",
            "K - best baseline", "K from", "steps", "time", "weights (checkpoint sha256)", "data", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], *(r["overrides"].get(k, "-") for k in keys), r["status"],
                 _pm(r.get("K"), r.get("K_stderr")), _pm(r.get("K_minus_L_null"), r.get("K_minus_L_null_stderr")),
                 _pm(r.get("true_log_likelihood"), r.get("true_log_likelihood_stderr")),
                 _pm(r.get("gap_to_truth"), r.get("gap_to_truth_stderr")), _baseline(r),
                 r.get("K_from", "-"),
                 str(r.get("steps") or "-"), _time(r.get("seconds")), _weights(r), _data(r),
                 r["note"].replace("|", "/")[:200]]
        lines.append("| " + " | ".join(cells) + " |")
    groups_ = summary(rows, keys)
    if groups_:
        lines += ["", "Complete runs per group: mean K ± standard error over runs (seeds); the difference from the "
                  "first group is paired by seed.", "",
                  "| group | runs | K | K - truth | K - first group | pairs |", "|---|---|---|---|---|---|"]
        lines += [f"| {g['group']} | {g['n']} | {_pm(g['K'], g['K_se'])} | {_pm(g['gap'], g['gap_se'])} | "
                  f"{_pm(g['diff'], g['diff_se'])} | {g['n_pairs'] or '-'} |" for g in groups_]
    failed = [r["run"] for r in rows if r["status"] == "failed"]
    unreadable = sum(r["status"] == "unreadable" for r in rows)
    lines += ["", f"{len(rows)} runs: {sum(r['status'] == 'complete' for r in rows)} complete, "
              f"{sum(r['status'] == 'incomplete' for r in rows)} incomplete, {len(failed)} failed"
              + (f" ({', '.join(failed)})" if failed else "") + (f", {unreadable} unreadable" if unreadable else "")
              + "."]
    software = sorted({f"dpm {r['dpm']}" + (f" (commit {r['dpm_commit'][:10]})" if r.get("dpm_commit") else "")
                       + f", torch {r['torch']}, lightning {r['lightning']}, {r['device']}" for r in rows if r.get("dpm")})
    if software:
        lines += ["", "Software and devices of the bounds: " + "; ".join(software) + ". Every number's command line, "
                  "checkpoint and data hash: report.csv (from each run's eval.json)."]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict], keys: list[str]) -> str:
    """One line per run: the swept keys, then every number unformatted."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    fields = ["status", *NUMBERS, "best_baseline", "weights_chosen", "unit", "K_from", "steps", "seconds", *PROVENANCE,
              "note"]
    writer.writerow(["run", *keys, *fields])
    for r in rows:
        writer.writerow([r["run"], *(r["overrides"].get(k, "") for k in keys),
                         *("" if r.get(f) is None else r.get(f) for f in fields)])
    return buf.getvalue()


def report(paths: list[str | Path], out: str | Path | None = None) -> dict:
    """Read the runs under paths, write report.md, report.csv and report.png into out; return rows and paths."""
    from dpm.figures.sweep import sweep_plot

    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory (give a multirun directory or run directories)")
    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no training runs (config.yaml or .hydra/config.yaml) under {[str(p) for p in paths]}")
    root = paths[0] if len(paths) == 1 else None
    rows = [read_run(run, root) for run in runs]
    config_differences(rows)
    fill_units(rows)
    keys = swept_keys(rows)
    out = Path(out) if out is not None else paths[0]
    files = {"md": write_text(out / "report.md", markdown(rows, keys)),
             "csv": write_text(out / "report.csv", to_csv(rows, keys)),
             "png": sweep_plot(rows, keys, out / "report.png", title=sweep_name(paths[0].resolve()))}
    return {"rows": rows, "keys": keys, "files": files, "runs": runs}


def log_to_wandb(result: dict) -> str:
    """Log the table and the plot as a W&B artifact (and a table and image of a "report" run) in the sweep's
    project and group, read from the runs' configs (conf/logger/wandb.yaml); returns the run's directory."""
    import wandb

    configs = [OmegaConf.load(r / "config.yaml") for r in result["runs"] if (r / "config.yaml").is_file()]
    wb = next((c.logger.wandb for c in configs if OmegaConf.select(c, "logger.wandb") is not None), None)
    group = (wb.get("group") if wb is not None else None) or sweep_name(result["files"]["md"].parent.resolve())
    offline = online_without_credentials()  # as training does (dpm.app.wandb_offline): kept on disk, synced later
    if offline:
        print("note: W&B has no credentials here, so the report is logged offline; upload it later with `wandb sync "
              f"{result['files']['md'].parent / 'wandb'}/offline-run-*`", file=sys.stderr)
    run = wandb.init(project=wb.project if wb is not None else "dpm", group=group, job_type="report",
                     name=f"report {group}", dir=str(result["files"]["md"].parent),
                     mode="offline" if offline else None)
    try:
        with open(result["files"]["csv"], newline="") as f:
            table = list(csv.reader(f))
        run.log({"report/table": wandb.Table(columns=table[0], data=table[1:]),
                 "report/plot": wandb.Image(str(result["files"]["png"]))})
        artifact = wandb.Artifact(re.sub(r"[^\w.-]", "_", f"report-{group}"), type="report")
        for path in result["files"].values():
            artifact.add_file(str(path))
        run.log_artifact(artifact)
        return run.dir
    finally:
        run.finish()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m dpm.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="a multirun directory, or run directories")
    parser.add_argument("--out", help="where report.md, report.csv and report.png go (default: the first DIR)")
    parser.add_argument("--wandb", action="store_true", help="also log the table and plot as W&B artifacts")
    args = parser.parse_args(argv)
    try:
        result = report(args.dirs, args.out)
    except FileNotFoundError as err:  # nothing to report: a path that is not there, or holds no runs
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(result["files"]["md"].read_text(), end="")
    print("wrote " + ", ".join(str(p) for p in result["files"].values()))
    if args.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise SystemExit("--wandb: the wandb package is not installed (pip install wandb)")
        print(f"logged to W&B ({log_to_wandb(result)})")
    return result


if __name__ == "__main__":
    main()
