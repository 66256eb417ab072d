"""Atomic writes (dpm.io.files): a failed write leaves the old file as it was, no temporary file, and the original
error; checkpoints go through the same path (dpm.app.checkpoint.AtomicCheckpointIO)."""

import errno

import pytest
import torch

from dpm.app.checkpoint import AtomicCheckpointIO
from dpm.io.files import write_atomic, write_json


def disk_full_after(n_bytes: int):
    def write(f):
        f.write(b"x" * n_bytes)
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def test_a_failed_write_keeps_the_old_file_and_the_original_error(tmp_path):
    path = tmp_path / "eval.json"
    write_json(path, {"K": 1.5})
    before = path.read_bytes()
    with pytest.raises(OSError, match="No space left on device") as err:
        write_atomic(path, disk_full_after(100))
    assert err.value.__context__ is None  # raised once, not behind a chain of cleanup errors
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]  # no temporary file left


def test_a_failed_first_write_leaves_no_empty_file(tmp_path):
    with pytest.raises(OSError):
        write_atomic(tmp_path / "crash.ckpt", disk_full_after(0))
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.ones(3)}, tmp_path / "last.ckpt")
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["w"], torch.ones(3))

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"w": torch.zeros(3)}, tmp_path / "last.ckpt")
    monkeypatch.undo()
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
