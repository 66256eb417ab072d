"""Where a result came from, recorded beside it (eval.json; the report's rows read it): the checkpoint's sha256,
step and which weights, the data's identity (a user's file or folder by the sha256 of its contents, a built-in set
by its name and version) and whether it is what the model was trained on, the versions of dpm (and its git commit
when run from a checkout), torch and Lightning, the device, and the exact command line. With these a reader can
reproduce a number, or see why it cannot be compared with another."""

from __future__ import annotations

import functools
import os
import platform
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import lightning
import torch

from dpm.io.files import file_sha256


def checkpoint_record(path: str | Path, step: int | None, weights: str) -> dict:
    """What identifies a model's weights: the checkpoint file (path and sha256; None where no file was written),
    its global step, which weights."""
    return {"path": str(path), "sha256": file_sha256(path) if Path(path).is_file() else None, "step": step,
            "weights": weights}


def data_record(dm) -> dict:
    """The data's identity now (dpm.data.base.DataModule.identity) and, where the checkpoint kept it, whether it
    is the data the model was trained on (changed: a different file content, package version or shape)."""
    now = dict(dm.identity())
    trained = (getattr(dm, "trained_on", None) or {}).get("identity")
    if trained is not None:
        now["same_as_training"] = trained == dm.identity()
        if not now["same_as_training"]:
            now["at_training"] = trained
    return now


def changed_data_note(dm) -> str | None:
    """A note when the data given are not those the model was trained on (None when they are, or unknown)."""
    record = data_record(dm)
    if record.get("same_as_training", True):
        return None
    was, now = record["at_training"], {k: v for k, v in record.items() if k not in ("at_training", "same_as_training")}
    what = lambda r: f"sha256 {r['sha256'][:16]}" if "sha256" in r else str(r.get("version"))  # noqa: E731
    return (f"note: {dm.origin} is not the data the model was trained on ({what(now)} now, {what(was)} at training): "
            "the results are the trained model's (its normalisation fitted on the training data) on the data as "
            "they are now; eval.json records both")


@functools.lru_cache(maxsize=1)
def software() -> dict:
    """The versions that produced a result: dpm (and, from a git checkout, its commit and whether the checkout had
    uncommitted changes), torch, Lightning, Python."""
    try:
        dpm_version = version("dpm")
    except PackageNotFoundError:
        dpm_version = "unknown"
    out = {"dpm": dpm_version, "torch": torch.__version__, "lightning": lightning.__version__,
           "python": platform.python_version()}
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=30)
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):  # no git here
            return out
        if commit.returncode == 0:
            out["dpm_commit"] = commit.stdout.strip()
            out["dpm_uncommitted_changes"] = bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    return out


def device_record(device: torch.device) -> str:
    """The device, named: 'cuda:0 (NVIDIA H200)', 'cpu (x86_64, 2 threads)'."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.machine() or 'unknown'}, {torch.get_num_threads()} threads)"


def command() -> dict:
    """The command line exactly as the process was started, and the folder it was started in."""
    return {"command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])), "cwd": os.getcwd()}


def provenance(module, dm) -> dict:
    """Everything above for a result of `module` (its weights' origin: module.origin, set by whoever loaded them)
    on `dm`."""
    return {"checkpoint": dict(getattr(module, "origin", None) or {}) or None, "data": data_record(dm),
            **software(), "device": device_record(module.device), **command()}
