"""Writing results so that a reader never sees half a file: a temporary file in the same directory, renamed.

A failed write (a full disk, a read-only folder) removes its temporary file and raises the original error once,
so no empty or truncated eval.json, config.yaml, figure or checkpoint is left behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Callable, IO

# A temporary file's name carries its writer's host and pid, so that the next start can tell a file an interrupted
# writer left (its process gone) from one a live writer still holds: .<name>.<host>.<pid>.<random>.tmp
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


class _Recording:
    """A binary file whose write records the OSError it raises: a writer such as torch.save turns a full disk
    into its own RuntimeError (`enforce fail at inline_container.cc`), which then hides the cause."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str):
        return getattr(self.f, name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call write(f) on a temporary binary file beside path, then rename it to path (atomic on POSIX).
    The file gets the permissions a plain open() would give it (mkstemp's are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    recording = None
    try:
        with os.fdopen(fd, "wb") as f:
            recording = _Recording(f)
            write(recording)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = recording.error if recording is not None else None
        if cause is None or cause is err and err.filename:
            raise
        hidden = cause  # the failed write (which a writer such as torch.save may wrap), once, naming the file
    else:
        return path
    raise OSError(hidden.errno, hidden.strerror or str(hidden), str(path))


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files (write_atomic's) in folder that a writer on this host left when it was
    killed mid-write (its process is gone); those of live writers and of other hosts stay. Returns those removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m is None or m["host"] != _host() or not p.is_file() or pid_alive(int(m["pid"])):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def pid_alive(pid: int) -> bool:
    """A process of that pid runs on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_text(path: str | Path, text: str) -> Path:
    """Atomic write of a UTF-8 text file."""
    return write_atomic(path, lambda f: f.write(text.encode()))


def finite_or_null(obj: object) -> object:
    """obj with every NaN or infinite float replaced by None, so that the JSON written is strict (standard JSON
    has no NaN or Infinity, and strict parsers reject them)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: object) -> Path:
    """Atomic write of obj as indented, strict JSON (a non-finite number is written as null)."""
    return write_text(path, json.dumps(finite_or_null(obj), indent=2, allow_nan=False) + "\n")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, hex (what `sha256sum FILE` prints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(files: list[Path], root: Path | None = None) -> str:
    """One sha256 for the contents of `files`: a single file's own sha256 (as `sha256sum FILE` prints it); for
    several, the sha256 of the lines `<sha256>  <path relative to root>` in sorted order (`sha256sum` of each file,
    sorted, then hashed), so that the hash names the contents and their names, not where the folder lies."""
    if len(files) == 1 and root is None:
        return file_sha256(files[0])
    lines = sorted(f"{file_sha256(p)}  {p.relative_to(root) if root is not None else p.name}\n" for p in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()
