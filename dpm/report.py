"""python -m dpm.report DIR [DIR ...] [--out DIR] [--wandb]: one table and one plot for a sweep.

Reads every training run under the given directories (a Hydra multirun directory, or run directories): its
config.yaml, .hydra/overrides.yaml, .hydra/job.json (dpm.sweep.SweepJobs), eval.json, logs/metrics.csv and
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
import json
import math
import re
from pathlib import Path

from omegaconf import OmegaConf

from dpm.files import write_text
from dpm.sweep import JOB_FILE, sweep_name

SKIP_DIRS = {".hydra", ".submitit", "wandb", "checkpoints", "logs", "__pycache__"}
IGNORED = re.compile(r"(^|\.)(out_dir|dirpath|save_dir|default_root_dir|ckpt_path|data_dir)$")
NUMBERS = ("K", "K_stderr", "K_minus_L_null", "K_minus_L_null_stderr", "true_log_likelihood",
           "true_log_likelihood_stderr", "gap_to_truth", "gap_to_truth_stderr")


def _natural(path: Path) -> list:
    """Sort key: multirun/10 after multirun/9."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path))]


def is_run(d: Path) -> bool:
    """A training run's directory: train.py's resolved config.yaml, or Hydra's record of a training config
    (a run that failed before writing config.yaml). evaluate.py's directories hold `task`, not `trainer`."""
    if (d / "config.yaml").is_file():
        return True
    hydra_cfg = d / ".hydra" / "config.yaml"
    return hydra_cfg.is_file() and "trainer" in OmegaConf.load(hydra_cfg)


def find_runs(paths: list[Path]) -> list[Path]:
    """Every run directory at or below paths, not looking inside a run (its eval/ subdirectories are its own)."""
    runs: list[Path] = []
    for path in paths:
        if is_run(path):
            runs.append(path)
            continue
        subdirs = [d for d in path.iterdir() if d.is_dir() and d.name not in SKIP_DIRS] if path.is_dir() else []
        runs += find_runs(sorted(subdirs, key=_natural))
    return runs


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or being written by a job that is still running
        return None


def last_validation(run: Path) -> dict:
    """The last val/K (and val/K_minus_L_null) and the last step logged in the run's metrics.csv files."""
    out: dict = {}
    for path in sorted(run.glob("logs/**/metrics.csv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row.get("step"):
                    out["steps"] = max(out.get("steps", 0), int(row["step"]) + 1)  # Lightning logs global_step - 1
                if row.get("val/K"):
                    out["K"], out["K_minus_L_null"] = float(row["val/K"]), float(row.get("val/K_minus_L_null") or "nan")
    return out


def find_eval(run: Path) -> tuple[dict | None, str]:
    """(eval.json, where it came from): the run's own, else the newest in a subdirectory."""
    own = _read_json(run / "eval.json")
    if own is not None:
        return own, "eval.json"
    nested = sorted(run.glob("*/eval.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in nested:
        result = _read_json(path)
        if result is not None:
            return result, f"{path.parent.name}/eval.json"
    return None, ""


def read_run(run: Path, root: Path | None = None) -> dict:
    """One row of the report for a run directory."""
    config = OmegaConf.to_container(OmegaConf.load(run / "config.yaml" if (run / "config.yaml").is_file()
                                                   else run / ".hydra" / "config.yaml"))
    overrides_file = run / ".hydra" / "overrides.yaml"
    overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    job = _read_json(run / ".hydra" / JOB_FILE) or {}
    val = last_validation(run)
    result, where = find_eval(run)
    row: dict = {"run": str(run.relative_to(root)) if root and run.is_relative_to(root) else str(run),
                 "overrides": dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o),
                 "config": config, "has_overrides": overrides_file.is_file(),
                 "steps": val.get("steps"), "seconds": job.get("seconds"), "note": ""}
    if result is not None:
        row.update({k: result.get(k) for k in NUMBERS}, unit=result.get("unit", ""),
                   K_from=f"{result.get('split')} {result.get('estimator')} ({where})")
    elif math.isfinite(val.get("K", math.nan)):
        row.update(K=val["K"], K_minus_L_null=val["K_minus_L_null"], unit="",
                   K_from="last val/K (mc, metrics.csv)")
    crashed = (run / "checkpoints" / "crash.ckpt").is_file()
    max_steps = (config.get("trainer") or {}).get("max_steps")
    if job.get("status") == "FAILED" or crashed:
        row["status"], row["note"] = "failed", job.get("error") or "crash.ckpt written"
    elif job.get("status") == "COMPLETED" or (run / "eval.json").is_file() or (
            not job and isinstance(max_steps, int) and (row["steps"] or 0) >= max_steps > 0):
        row["status"] = "complete"  # a run without a job record (not launched by Hydra) by its steps
    else:
        row["status"] = "incomplete"
        row["note"] = "running, or stopped without an error" if job.get("status") == "RUNNING" else "no end recorded"
    return row


def flatten(node, prefix: str = "") -> dict[str, object]:
    """{"a.b.c": leaf} for a nested dict."""
    if not isinstance(node, dict):
        return {prefix: node}
    return {k: v for key, child in node.items() for k, v in flatten(child, f"{prefix}{key}.").items()} if node \
        else {prefix: node}


def config_differences(rows: list[dict]) -> None:
    """For runs without Hydra's overrides.yaml (dpm.run.train called directly), the config values that differ
    between the runs stand in for their overrides, paths and output directories left out."""
    flats = [{k.rstrip("."): v for k, v in flatten(r["config"]).items()} for r in rows]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    differ = [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1 and not IGNORED.search(k)]
    for row, flat in zip(rows, flats):
        if not row["has_overrides"]:
            row["overrides"] = {k: _as_override(flat.get(k)) for k in differ}


def _as_override(value) -> str:
    """A config value as it would be written on the command line: true, null, 0.001, text."""
    return value if isinstance(value, str) else json.dumps(value)


def fill_units(rows: list[dict]) -> None:
    """Runs whose K came from metrics.csv take the unit an eval.json of the same data set gives (importing the
    data module to ask it would pull in torch for a table)."""
    target = lambda r: (r["config"].get("dataset") or {}).get("_target_")  # noqa: E731
    units = {target(r): r["unit"] for r in rows if r.get("unit")}
    for r in rows:
        if not r.get("unit"):
            r["unit"] = units.get(target(r), "")


def swept_keys(rows: list[dict]) -> list[str]:
    """The override keys whose values differ between runs (or that only some runs set), in first-seen order."""
    keys = list(dict.fromkeys(k for row in rows for k in row["overrides"]))
    return [k for k in keys if len({row["overrides"].get(k) for row in rows}) > 1]


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (std with ddof 1 over sqrt n) of finite values; nan where undefined."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else math.nan
    return mean, se


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
        out.append({"group": ", ".join(f"{k}={v}" for k, v in zip([k for k in keys if k != "seed"], key)) or "all",
                    "n": len(members), "K": K, "K_se": K_se, "gap": gap, "gap_se": gap_se,
                    "diff": d, "diff_se": d_se, "n_pairs": len(diffs) if members is not base else 0})
    return out


def _pm(mean, se, digits: int = 3) -> str:
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None and math.isfinite(se) else "")


def _time(seconds) -> str:
    return "-" if seconds is None else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def markdown(rows: list[dict], keys: list[str]) -> str:
    """The per-run table and the per-group summary, in Markdown."""
    unit = next((r["unit"] for r in rows if r.get("unit")), "")
    head = ["run", *keys, "status", f"K ({unit or 'unit of the data'})", "K - L_null", "truth", "K - truth",
            "K from", "steps", "time", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], *(r["overrides"].get(k, "-") for k in keys), r["status"],
                 _pm(r.get("K"), r.get("K_stderr")), _pm(r.get("K_minus_L_null"), r.get("K_minus_L_null_stderr")),
                 _pm(r.get("true_log_likelihood"), r.get("true_log_likelihood_stderr")),
                 _pm(r.get("gap_to_truth"), r.get("gap_to_truth_stderr")), r.get("K_from", "-"),
                 str(r.get("steps") or "-"), _time(r.get("seconds")), r["note"].replace("|", "/")[:200]]
        lines.append("| " + " | ".join(cells) + " |")
    groups_ = summary(rows, keys)
    if groups_:
        lines += ["", "Complete runs per group: mean K ± standard error over runs (seeds); the difference from the "
                  "first group is paired by seed.", "",
                  "| group | runs | K | K - truth | K - first group | pairs |", "|---|---|---|---|---|---|"]
        lines += [f"| {g['group']} | {g['n']} | {_pm(g['K'], g['K_se'])} | {_pm(g['gap'], g['gap_se'])} | "
                  f"{_pm(g['diff'], g['diff_se'])} | {g['n_pairs'] or '-'} |" for g in groups_]
    failed = [r["run"] for r in rows if r["status"] == "failed"]
    lines += ["", f"{len(rows)} runs: {sum(r['status'] == 'complete' for r in rows)} complete, "
              f"{sum(r['status'] == 'incomplete' for r in rows)} incomplete, {len(failed)} failed"
              + (f" ({', '.join(failed)})" if failed else "") + "."]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict], keys: list[str]) -> str:
    """One line per run: the swept keys, then every number unformatted."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    fields = ["status", *NUMBERS, "unit", "K_from", "steps", "seconds", "note"]
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
    run = wandb.init(project=wb.project if wb is not None else "dpm", group=group, job_type="report",
                     name=f"report {group}", dir=str(result["files"]["md"].parent))
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
    result = report(args.dirs, args.out)
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
