"""Run directories: one run per directory (docs/contracts.md, contract 6), Hydra's record of the command written only
after the directory is claimed, and the `latest` link that the README's quick start evaluates.

Hydra writes `.hydra/` before the task starts, so the configs set `hydra.output_subdir: null` and the record
is written here instead, once the directory has been found free.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from dpm.errors import ConfigError
from dpm.io.files import write_text

HYDRA_LOGS = (".log",)
_CLAIMED: set[str] = set()  # run directories this process claimed (dpm.sweeps.jobs writes its job record only there)  # Hydra's job log (train.log / evaluate.log) is opened before the task starts


def global_rank_from_env() -> int:
    """This process's rank as the launcher set it (Lightning's DDP re-launch, torchrun, SLURM); 0 otherwise."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def holds_results(path: Path) -> list[str]:
    """The entries of path that belong to an earlier run (anything but Hydra's job log)."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if not (p.is_file() and p.suffix in HYDRA_LOGS))


def claim(path: str | Path, what: str = "training run") -> Path:
    """Refuse a directory that already holds a run's files; else create it and check it is writable."""
    path = Path(path)
    found = holds_results(path)
    if found:
        if what == "training run":
            ways = ("train into a new directory (leave hydra.run.dir unset for a fresh timestamped one, or give "
                    "another), or resume the run there into a new directory with ckpt_path="
                    f"{path / 'checkpoints' / 'last.ckpt'}")
        else:
            ways = "leave hydra.run.dir unset (each evaluation gets a new directory) or give an empty one"
        raise ConfigError(f"hydra.run.dir={path} already holds a run ({', '.join(found[:5])}"
                          f"{', ...' if len(found) > 5 else ''}); nothing there is overwritten. To go on: {ways}.")
    check_writable(path, "hydra.run.dir")
    _CLAIMED.add(os.path.abspath(path))
    return path


def claimed(path: str | Path) -> bool:
    """Whether this process claimed the directory (so writing into it cannot touch an earlier run's files)."""
    return os.path.abspath(path) in _CLAIMED


def check_writable(path: Path, key: str) -> None:
    """Create path (a directory) and write a probe file there, so a read-only folder fails now, not at a save."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{key}={path} cannot be written ({err.strerror or err}); choose a writable "
                          "directory.") from None


def write_hydra_record(out_dir: Path, files: dict[str, str]) -> None:
    """Hydra's .hydra/{config,hydra,overrides}.yaml, written after the directory was claimed."""
    for name, text in files.items():
        write_text(out_dir / ".hydra" / name, text)


def update_link(link: str | Path | None, target: Path) -> None:
    """Point the symlink `link` at target (atomically: a new link renamed over the old one)."""
    if not link:
        return
    link = Path(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.abspath(target), tmp)
    os.replace(tmp, link)


def eval_dir(ckpt_path: str | None, task: str) -> str:
    """evaluate.py's default output directory: <run>/eval/<task>-<time> for a checkpoint in a run's
    checkpoints/ folder (so it never writes over the run's own files), else outputs/eval/<date>/<task>-<time>."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    if ckpt_path and ckpt_path != "???":
        ckpt = Path(ckpt_path)
        if ckpt.parent.name == "checkpoints":
            return str(ckpt.parent.parent / "eval" / f"{task}-{stamp}")
    return str(Path("outputs") / "eval" / f"{task}-{stamp}")
