"""Run directories: one run per directory (docs/contracts.md, contract 6), Hydra's record of the command written only
after the directory is claimed, and the `latest` link that the README's quick start evaluates.

Hydra writes `.hydra/` before the task starts, so the configs set `hydra.output_subdir: null` and the record
is written here instead, once the directory has been found free.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

from dpm.errors import ConfigError
from dpm.io.files import write_text

HYDRA_LOGS = (".log",)  # Hydra's job log (train.log / evaluate.log) is opened before the task starts
CLAIM_FILE = ".dpm-claim"  # created with O_EXCL: of two processes claiming one directory, exactly one wins
_CLAIMED: set[str] = set()  # run directories this process claimed (dpm.sweeps.jobs writes its job record only there)


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


def _refusal(path: Path, what: str, found: list[str]) -> ConfigError:
    if what == "training run":
        ways = ("train into a new directory (leave hydra.run.dir unset for a fresh timestamped one, or give "
                "another), or resume the run there into a new directory with ckpt_path="
                f"{path / 'checkpoints' / 'last.ckpt'}")
    else:
        ways = "leave hydra.run.dir unset (each evaluation gets a new directory) or give an empty one"
    return ConfigError(f"hydra.run.dir={path} already holds a run ({', '.join(found[:5])}"
                       f"{', ...' if len(found) > 5 else ''}); nothing there is overwritten. To go on: {ways}.")


def claim(path: str | Path, what: str = "training run") -> Path:
    """Refuse a directory that already holds a run's files; else take it for this run, atomically.

    The claim is a file created with O_CREAT | O_EXCL: of several processes claiming the same directory at once
    (a SLURM array, a script started twice) exactly one gets it, and the others are refused as if it held a run.
    """
    path = Path(path)
    found = holds_results(path)
    if found:
        raise _refusal(path, what, found)
    check_writable(path, "hydra.run.dir")
    try:
        fd = os.open(path / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise _refusal(path, what, [CLAIM_FILE]) from None
    with os.fdopen(fd, "w") as f:
        f.write(f"{what} pid {os.getpid()} {datetime.now().isoformat(timespec='seconds')}\n")
    _CLAIMED.add(os.path.abspath(path))
    return path


def release(path: str | Path, keep_logs: bool = False) -> bool:
    """Undo what a command that did not get to write results left in its run directory: the claim, Hydra's
    record (.hydra/) and empty folders; then, unless keep_logs (a sweep job, whose log the report reads), the job
    log and the directory itself. Returns whether anything was removed. A directory with results (a checkpoint,
    eval.json, a figure, anything this function does not know) is left exactly as it is."""
    path = Path(path)
    if not path.is_dir():
        return False
    ours = {CLAIM_FILE, ".hydra"}
    entries = list(path.iterdir())
    results = [p for p in entries if p.name not in ours and p.suffix not in HYDRA_LOGS and not _empty_tree(p)]
    if results:
        return False
    for p in entries:
        if p.suffix in HYDRA_LOGS and (keep_logs or not p.is_file()):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    _CLAIMED.discard(os.path.abspath(path))
    if not keep_logs:
        for d in (path, path.parent):  # the directory, and <run>/eval/ when it was the last evaluation there
            try:
                d.rmdir()
            except OSError:
                break
    return True


def _empty_tree(p: Path) -> bool:
    """A directory holding nothing but empty directories (e.g. checkpoints/ before the first save)."""
    return p.is_dir() and not p.is_symlink() and all(_empty_tree(c) for c in p.iterdir())


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


def uncreatable(path: Path) -> str | None:
    """Why the directory path cannot be created or written (its nearest existing ancestor is a file, or is not
    writable), else None: without creating anything (before Hydra creates it; check_writable creates and probes)."""
    ancestor = path.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{ancestor} cannot be written"
    return None


def write_hydra_record(out_dir: Path, files: dict[str, str]) -> None:
    """Hydra's .hydra/{config,hydra,overrides}.yaml, written after the directory was claimed."""
    for name, text in files.items():
        write_text(out_dir / ".hydra" / name, text)


def update_link(link: str | Path | None, target: Path) -> str | None:
    """Point the symlink `link` at target (atomically: a new link renamed over the old one). Anything at `link`
    that is not a symlink (a user's file or folder) is left untouched and a note says so; returns that note."""
    if not link:
        return None
    link = Path(link)
    if link.exists() and not link.is_symlink():
        kind = "folder" if link.is_dir() else "file"
        return (f"note: latest_link={link} is a {kind}, not a link: left as it is (set latest_link=null or "
                "another path to have a link to the newest run)")
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.abspath(target), tmp)
        os.replace(tmp, link)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        return f"note: latest_link={link} could not be updated ({err.strerror or err})"
    return None


def eval_dir(ckpt_path: str | None, task: str) -> str:
    """evaluate.py's default output directory: <run>/eval/<task>-<time> for a checkpoint in a run's
    checkpoints/ folder (so it never writes over the run's own files), else outputs/eval/<date>/<task>-<time>."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    if ckpt_path and ckpt_path != "???":
        ckpt = Path(ckpt_path)
        if ckpt.parent.name == "checkpoints":
            return str(ckpt.parent.parent / "eval" / f"{task}-{stamp}")
    return str(Path("outputs") / "eval" / f"{task}-{stamp}")
