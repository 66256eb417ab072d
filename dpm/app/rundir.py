"""Run directories: one run per directory (docs/contracts.md, contract 6), held by a claim file while a command runs;
what a refused command may remove (only what it created: docs/security.md); Hydra's record of the command written
only after the directory is claimed; and the `latest` link that the README's quick start evaluates.

Hydra writes `.hydra/` before the task starts, so the configs set `hydra.output_subdir: null` and the record
is written here instead, once the directory has been found free.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

from dpm.app.slurm import restarts, slurm_job_id
from dpm.errors import ConfigError, Interrupted
from dpm.io.files import pid_alive, write_text

HYDRA_LOGS = (".log",)  # Hydra's job log (train.log / evaluate.log) is opened before the task starts
CLAIM_FILE = ".dpm-claim"  # created with O_EXCL: of two processes claiming one directory, exactly one wins
# Run directories this process claimed -> the entries they held when it claimed them (nothing but logs and empty
# folders, or the claim would have been refused): what it may remove again is what appeared after that.
_CLAIMED: dict[str, frozenset[str]] = {}
# Directories named on the command line (or chosen by evaluate's default) -> what they held before the command
# started (None: they did not exist), and the folders above them that did not exist either; so that a refused
# command removes only what it created (note_start).
_BEFORE: dict[str, tuple[frozenset[str] | None, tuple[str, ...]]] = {}
_SNAPSHOT_DEPTH = 2  # a sweep directory's jobs and their files


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


def _entries(path: Path, depth: int = _SNAPSHOT_DEPTH) -> frozenset[str]:
    """The relative paths of path's entries, down to `depth` levels (a few hundred at most are expected)."""
    found, level = set(), [path]
    for _ in range(depth):
        below = []
        for d in level:
            for p in d.iterdir() if d.is_dir() and not d.is_symlink() else ():
                found.add(p.relative_to(path).as_posix())
                below.append(p)
        level = below
    return frozenset(found)


def note_start(path: str | Path) -> None:
    """Record what the directory `path` held before this command started (called before Hydra creates it), so that
    release() removes only what this command created. The first note of a path counts."""
    path = Path(os.path.abspath(path))
    if str(path) in _BEFORE:
        return
    missing, d = [], path.parent
    while not d.exists() and d != d.parent:
        missing.append(str(d))
        d = d.parent
    _BEFORE[str(path)] = (_entries(path) if path.is_dir() else None, tuple(missing))


def _existed(path: Path) -> bool | None:
    """Whether path existed before this command started: from the note of path or of a directory above it; None
    where nothing was noted (a fresh timestamped directory of Hydra's)."""
    path = Path(os.path.abspath(path))
    for above in (path, *path.parents):
        note = _BEFORE.get(str(above))
        if note is None:
            continue
        entries, _ = note
        if above == path:
            return entries is not None
        rel = path.relative_to(above)
        if entries is None:
            return False
        return len(rel.parts) > _SNAPSHOT_DEPTH or rel.as_posix() in entries
    return None


def _refusal(path: Path, what: str, found: list[str]) -> ConfigError:
    if what == "training run":
        ways = ("train into a new directory (leave hydra.run.dir unset for a fresh timestamped one, or give "
                "another), or resume the run there into a new directory with ckpt_path="
                f"{path / 'checkpoints' / 'last.ckpt'}")
    else:
        ways = "leave hydra.run.dir unset (each evaluation gets a new directory) or give an empty one"
    return ConfigError(f"hydra.run.dir={path} already holds a run ({', '.join(found[:5])}"
                       f"{', ...' if len(found) > 5 else ''}); nothing there is overwritten. To go on: {ways}.")


def _process_start(pid: int) -> str | None:
    """The start time of process pid (Linux: /proc/<pid>/stat, clock ticks since boot), which tells the process
    from a later one that got its pid; None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def claim_record(what: str) -> dict:
    """What a claim file says: the command, and the process that holds the directory (host, pid, start time); in
    a SLURM batch job also the job and how often SLURM had started it again (requeued_run)."""
    record = {"what": what, "host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid()),
              "time": datetime.now().isoformat(timespec="seconds")}
    if slurm_job_id() is not None:
        record.update(slurm_job=slurm_job_id(), slurm_restart=restarts())
    return record


def read_claim(path: Path) -> dict:
    """The claim file's record ({} where it cannot be read: one from an older version, or being written)."""
    try:
        record = json.loads((path / CLAIM_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def claim_is_stale(record: dict) -> bool:
    """The claim's process is gone: on this host, with no process of that pid, or another one that got it since."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False  # another host's process (or an unreadable record) cannot be checked from here
    pid = record["pid"]
    if not pid_alive(pid):
        return True
    started = _process_start(pid)
    return started is not None and record.get("started") is not None and started != record["started"]


def _holder(record: dict) -> str:
    return f"pid {record.get('pid', '?')} on {record.get('host', '?')}, since {record.get('time', '?')}"


def claim(path: str | Path, what: str = "training run") -> Path:
    """Refuse a directory that already holds a run's files; else take it for this run, atomically.

    The claim is a file created with O_CREAT | O_EXCL: of several processes claiming the same directory at once
    (a SLURM array, a script started twice) exactly one gets it, and the others are refused as if it held a run.
    A claim left by a process that is gone (killed by SIGKILL, say) is taken over when the directory holds nothing
    else of a run; otherwise the refusal says so and how to go on.
    """
    path = Path(path)
    if requeued_run(path):
        return _take_back(path, what)
    if (path / CLAIM_FILE).exists():
        _take_over_stale(path, what)
    found = holds_results(path)
    if found:
        raise _refusal(path, what, found)
    check_writable(path, "hydra.run.dir")
    held = _entries(path, depth=8)
    try:
        fd = os.open(path / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise _refusal(path, what, [CLAIM_FILE]) from None
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(claim_record(what)) + "\n")
    _CLAIMED[os.path.abspath(path)] = held
    return path


def requeued_run(path: str | Path) -> bool:
    """Whether path is this SLURM job's own run directory from before a requeue: its claim (kept when the run was
    stopped, claimed_for) names this job and a start of it no later than this one. SLURM ends every process of a
    job before it starts the job again, so nothing else of the job can be writing there. The job's other tasks (DDP
    ranks) read the claim too: "no later" covers the one rank 0 of this start may have written already. A live
    process of an earlier start on this host (the same variables set by hand) keeps its directory."""
    job = slurm_job_id()
    if job is None or restarts() == 0:
        return False
    record = read_claim(Path(path))
    restart = record.get("slurm_restart")
    if record.get("slurm_job") != job or not isinstance(restart, int) or restart > restarts():
        return False
    # an earlier start's process is gone (SLURM ended it; on another node it cannot be checked from here)
    return restart == restarts() or record.get("host") != socket.gethostname() or claim_is_stale(record)


def _take_back(path: Path, what: str) -> Path:
    """Claim a directory again for the SLURM job that claimed it before its requeue (requeued_run): a new record,
    renamed over the old one; what is there stays and is never removed by release()."""
    tmp = path / f"{CLAIM_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(claim_record(what)) + "\n")
    os.replace(tmp, path / CLAIM_FILE)
    _CLAIMED[os.path.abspath(path)] = _entries(path, depth=8)
    return path


def _take_over_stale(path: Path, what: str) -> None:
    """A claim file is there: a live process's is refused (naming it); a gone process's is removed when the
    directory holds nothing else of a run (its record .hydra/, logs, empty folders), else refused, saying so."""
    record = read_claim(path)
    if not claim_is_stale(record):
        if record:
            raise ConfigError(f"hydra.run.dir={path} is in use by another command ({record.get('what', 'a run')}, "
                              f"{_holder(record)}); nothing there is touched. Give another directory, or leave "
                              "hydra.run.dir unset for a fresh one.")
        return  # an older claim file without a record: refused as holding a run (holds_results)
    rest = [p for p in path.iterdir() if p.name not in (CLAIM_FILE, ".hydra")
            and not (p.is_file() and p.suffix in HYDRA_LOGS) and not _empty_tree(p)]
    if rest:
        names = ", ".join(sorted(p.name for p in rest)[:5])
        last = path / "checkpoints" / "last.ckpt"
        resume = f" resume it with ckpt_path={last} (into a new directory)," if last.is_file() else ""
        raise ConfigError(f"hydra.run.dir={path} holds what a {record.get('what', 'run')} left when its process "
                          f"({_holder(record)}) ended without finishing ({names}); nothing there is overwritten. "
                          f"To go on:{resume} or give another directory (or leave hydra.run.dir unset).")
    stale = path / f"{CLAIM_FILE}.stale-{os.getpid()}"
    try:
        os.rename(path / CLAIM_FILE, stale)  # atomic: of two commands taking it over, one renames it
    except FileNotFoundError:
        return  # another command took it over first: its new claim (if any) decides
    stale.unlink(missing_ok=True)
    shutil.rmtree(path / ".hydra", ignore_errors=True)  # the gone process's record; this command writes its own


def release(path: str | Path, keep_logs: bool = False) -> bool:
    """Undo what this command created in its run directory when it did not get to write results: its claim, its
    record (.hydra/), folders made after the claim, then, unless keep_logs (a sweep job, whose log the report reads),
    its job log and the directory, where they did not exist before the command started. Nothing of another
    command (a directory another process claimed) and nothing that was there before is touched; a directory with
    results (a checkpoint, eval.json, a figure, anything this function does not know) is left exactly as it is.
    Returns whether anything was removed."""
    path = Path(path)
    key = os.path.abspath(path)
    if not path.is_dir():
        return False
    held = _CLAIMED.get(key)
    if held is None and (path / CLAIM_FILE).exists():
        return False  # another command's directory
    ours = {CLAIM_FILE, ".hydra"} if held is not None else set()
    entries = list(path.iterdir())
    results = [p for p in entries if p.name not in ours and p.suffix not in HYDRA_LOGS and not _empty_tree(p)]
    if results:
        return False
    removed = False
    for p in entries:
        if p.name in ours:
            pass
        elif p.suffix in HYDRA_LOGS and p.is_file():
            if keep_logs or _existed(p):
                continue  # a sweep job's log, or a log that was there before (a user's, a scheduler's)
        elif held is None or p.name in held:
            continue  # a folder that was there before the claim
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed = True
    _CLAIMED.pop(key, None)
    if not keep_logs and not _existed(path):
        note = _BEFORE.get(key)
        created_above = note[1] if note is not None else (str(path.parent),)
        for d in (key, *created_above):  # the directory, and the folders the command made above it
            try:
                os.rmdir(d)
                removed = True
            except OSError:
                break
    return removed


@contextmanager
def claimed_for(path: str | Path, what: str, rank0: bool = True) -> Iterator[None]:
    """claim(path) for the time of a command on rank 0 (the other ranks share its directory); the claim file goes
    when the command ends, whatever the outcome: from then on what the run wrote keeps other commands out
    (holds_results), so a claim file found later is always a live command's or a killed one's, or that of a SLURM
    job stopped by a signal, which SLURM may start again to take its directory back (requeued_run)."""
    if not rank0:
        yield
        return
    claim(path, what)
    keep = False
    try:
        yield
    except Interrupted:
        keep = slurm_job_id() is not None
        raise
    finally:
        if not keep:
            (Path(path) / CLAIM_FILE).unlink(missing_ok=True)


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
    out = Path("outputs") / "eval" / f"{task}-{stamp}"
    if ckpt_path and ckpt_path != "???":
        ckpt = Path(ckpt_path)
        if ckpt.parent.name == "checkpoints":
            out = ckpt.parent.parent / "eval" / f"{task}-{stamp}"
    note_start(out)  # before Hydra creates it: a refused evaluation removes eval/ only if it made it
    return str(out)
