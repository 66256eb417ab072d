"""Reading training runs from their directories, for python -m dpm.report: which directories are runs, and for
each one row (overrides, K and where it came from, the truth where known, steps, time, status).

A run is a directory with train.py's config.yaml (or Hydra's .hydra/config.yaml of a training config). Its row
reads .hydra/overrides.yaml, .hydra/job.json (dpm.sweeps.jobs.SweepJobs), eval.json (its own, else one in a
subdirectory), logs/metrics.csv and checkpoints/crash.ckpt.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

from omegaconf import OmegaConf

from dpm.sweeps.jobs import JOB_FILE

SKIP_DIRS = {".hydra", ".submitit", "wandb", "checkpoints", "logs", "__pycache__"}
IGNORED = re.compile(r"(^|\.)(out_dir|dirpath|save_dir|default_root_dir|ckpt_path|data_dir)$")
NUMBERS = ("K", "K_stderr", "K_minus_L_null", "K_minus_L_null_stderr", "true_log_likelihood",
           "true_log_likelihood_stderr", "gap_to_truth", "gap_to_truth_stderr", "K_minus_best_baseline",
           "K_minus_best_baseline_stderr", "weights_step")


def _natural(path: Path) -> list:
    """Sort key: multirun/10 after multirun/9."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path))]


def is_run(d: Path) -> bool:
    """A training run's directory: train.py's resolved config.yaml, or Hydra's record of a training config
    (a run that failed before writing config.yaml). evaluate.py's directories hold `task`, not `trainer`."""
    if (d / "config.yaml").is_file() or (d / ".hydra" / JOB_FILE).is_file():  # a job refused at start: its record
        return True
    hydra_cfg = d / ".hydra" / "config.yaml"
    try:
        return hydra_cfg.is_file() and "trainer" in OmegaConf.load(hydra_cfg)
    except Exception:  # a broken file: not a training run's record
        return False


def find_runs(paths: list[Path], seen: set[str] | None = None) -> list[Path]:
    """Every run directory at or below paths, not looking inside a run (its eval/ subdirectories are its own), each
    real directory once: a link to a folder already seen (a link loop, a second name for a run) is not followed
    again."""
    seen = set() if seen is None else seen
    runs: list[Path] = []
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        if is_run(path):
            runs.append(path)
            continue
        subdirs = [d for d in path.iterdir() if d.is_dir() and d.name not in SKIP_DIRS] if path.is_dir() else []
        runs += find_runs(sorted(subdirs, key=_natural), seen)
    return runs


def _read_json(path: Path) -> dict | None:
    """The JSON object in path; None if absent, unreadable or not an object (a job still writing it, a damaged
    or foreign file)."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _config(run: Path) -> tuple[dict, str]:
    """(the run's resolved config, a note): config.yaml, else Hydra's record; {} and why, where neither reads."""
    for path in (run / "config.yaml", run / ".hydra" / "config.yaml"):
        if path.is_file():
            try:
                config = OmegaConf.to_container(OmegaConf.load(path))
            except Exception as err:
                return {}, f"{path.name} unreadable ({type(err).__name__})"
            return (config, "") if isinstance(config, dict) else ({}, f"{path.name} is not a mapping")
    return {}, ""


def last_validation(run: Path) -> dict:
    """The last val/K (and val/K_minus_L_null) and the last step logged in the run's metrics.csv files; a file that
    cannot be read (damaged, not CSV, a number that is not one) is named in "note" and left out, the rest still
    counts."""
    out: dict = {}
    for path in sorted(run.glob("logs/**/metrics.csv")):
        found: dict = {}
        try:
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    if row.get("step") and not row.get("test/K"):  # the end's test row is logged at global_step
                        found["steps"] = max(found.get("steps", 0), int(row["step"]) + 1)  # Lightning logs step - 1
                    if row.get("val/K"):
                        found["K"] = float(row["val/K"])
                        found["K_minus_L_null"] = float(row.get("val/K_minus_L_null") or "nan")
        except (OSError, ValueError, csv.Error) as err:  # UnicodeDecodeError is a ValueError
            out["note"] = f"{path.relative_to(run)} unreadable ({type(err).__name__}: {str(err)[:80]})"
            continue
        if "steps" in found:
            out["steps"] = max(out.get("steps", 0), found.pop("steps"))
        out.update(found)
    return out


def find_eval(run: Path) -> tuple[dict | None, str]:
    """(eval.json, where it came from): the run's own, else the newest in a subdirectory."""
    own = _read_json(run / "eval.json")
    if own is not None:
        return own, "eval.json"
    if (run / "eval.json").is_file():
        return None, "eval.json unreadable"
    nested = sorted(run.glob("*/eval.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in nested:
        result = _read_json(path)
        if result is not None:
            return result, f"{path.parent.name}/eval.json"
    return None, ""


def read_run(run: Path, root: Path | None = None) -> dict:
    """One row of the report for a run directory."""
    config, config_note = _config(run)
    job = _read_json(run / ".hydra" / JOB_FILE) or {}
    overrides_file = run / ".hydra" / "overrides.yaml"
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else None
    except Exception:
        overrides = None
    if not isinstance(overrides, list):
        overrides = job.get("overrides") or []
    val = last_validation(run)
    result, where = find_eval(run)
    row: dict = {"run": str(run.relative_to(root)) if root and run.is_relative_to(root) else str(run),
                 "overrides": dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o),
                 "config": config, "has_overrides": overrides_file.is_file() or "overrides" in job,
                 "steps": val.get("steps"), "seconds": job.get("seconds"),
                 "note": "; ".join(n for n in (config_note, val.get("note", "")) if n)}
    if result is not None:
        row.update({k: result.get(k) for k in NUMBERS}, unit=result.get("unit", ""),
                   K_from=f"{result.get('split')} {result.get('estimator')} ({where})",
                   best_baseline=result.get("best_baseline"), weights_chosen=result.get("weights_chosen"), **provenance_fields(result))
    elif math.isfinite(val.get("K", math.nan)):
        row.update(K=val["K"], K_minus_L_null=val["K_minus_L_null"], unit="",
                   K_from="last val/K (mc, metrics.csv)" + (f"; {where}" if where else ""))
    crashed = (run / "checkpoints" / "crash.ckpt").is_file()
    max_steps = (config.get("trainer") or {}).get("max_steps")
    if job.get("status") == "FAILED" or crashed:
        row["status"], row["note"] = "failed", job.get("error") or "crash.ckpt written"
    elif config_note or where == "eval.json unreadable":  # its K cannot be told: not counted as a complete run
        row["status"] = "unreadable"
        row["note"] = row["note"] or "eval.json unreadable (damaged or not JSON); its K is left out of the groups"
    elif job.get("status") == "COMPLETED" or (run / "eval.json").is_file() or (
            not job and isinstance(max_steps, int) and (row["steps"] or 0) >= max_steps > 0):
        row["status"] = "complete"  # a run without a job record (not launched by Hydra) by its steps
    else:
        row["status"] = "incomplete"
        end = "running, or stopped without an error" if job.get("status") == "RUNNING" else "no end recorded"
        row["note"] = "; ".join(n for n in (end, row["note"]) if n)
    return row


PROVENANCE = ("weights", "checkpoint_step", "checkpoint_sha256", "data", "data_as_trained", "dpm", "dpm_commit",
              "torch", "lightning", "device", "command")


def provenance_fields(result: dict) -> dict:
    """The row's provenance (PROVENANCE) from an eval.json's (dpm.tasks.provenance); None where it has none."""
    p = result.get("provenance") if isinstance(result.get("provenance"), dict) else {}
    ckpt = p.get("checkpoint") if isinstance(p.get("checkpoint"), dict) else {}
    data = p.get("data") if isinstance(p.get("data"), dict) else {}
    return {"weights": ckpt.get("weights", result.get("weights")), "checkpoint_step": ckpt.get("step"),
            "checkpoint_sha256": ckpt.get("sha256"), "data": data.get("sha256") or data.get("version"),
            "data_as_trained": data.get("same_as_training"), "dpm": p.get("dpm"), "dpm_commit": p.get("dpm_commit"),
            "torch": p.get("torch"), "lightning": p.get("lightning"), "device": p.get("device"),
            "command": p.get("command")}


def flatten(node, prefix: str = "") -> dict[str, object]:
    """{"a.b.c": leaf} for a nested dict."""
    if not isinstance(node, dict):
        return {prefix: node}
    return {k: v for key, child in node.items() for k, v in flatten(child, f"{prefix}{key}.").items()} if node \
        else {prefix: node}


def config_differences(rows: list[dict]) -> None:
    """For runs without Hydra's overrides.yaml (dpm.app.train.train called directly), the config values that differ
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
