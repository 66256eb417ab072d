"""Writing results so that a reader never sees half a file: a temporary file in the same directory, renamed.

A failed write (a full disk, a read-only folder) removes its temporary file and raises the original error once,
so no empty or truncated eval.json, config.yaml, figure or checkpoint is left behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call write(f) on a temporary binary file beside path, then rename it to path (atomic on POSIX).
    The file gets the permissions a plain open() would give it (mkstemp's are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
