"""The run directory: one claim wins among processes started together, a refused command's leftovers are removed
(results never), outputs/latest never replaces a user's file or folder, and temporary files of killed writers are
cleaned at the next start."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import pytest

from dpm.app.rundir import CLAIM_FILE, claim, release, update_link
from dpm.errors import ConfigError
from dpm.io.files import remove_stale_temps, write_text


def _claim_when_released(path: str, start, results) -> None:
    start.wait()
    try:
        claim(path)
        results.put("won")
    except ConfigError:
        results.put("refused")


def test_of_two_processes_claiming_one_directory_exactly_one_wins(tmp_path):
    """20 pairs of processes, each pair released together by a barrier onto the same empty directory."""
    ctx = mp.get_context("fork")
    outcomes = []
    for i in range(20):
        start, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_claim_when_released, args=(str(tmp_path / str(i)), start, results))
                 for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        outcomes.append(sorted(results.get(timeout=10) for _ in procs))
    assert outcomes == [["refused", "won"]] * 20


def test_release_removes_what_a_refused_command_left_and_keeps_results(tmp_path):
    run = tmp_path / "run"
    claim(run)
    write_text(run / ".hydra" / "config.yaml", "a: 1\n")
    (run / "checkpoints").mkdir()
    (run / "train.log").write_text("log\n")
    assert release(run) and not run.exists()
    claim(run)
    (run / "train.log").write_text("log\n")
    assert release(run, keep_logs=True) and sorted(p.name for p in run.iterdir()) == ["train.log"]  # a sweep job's
    claim(run)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    assert not release(run) and (run / CLAIM_FILE).is_file() and (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_latest_link_leaves_a_users_file_or_folder_alone(tmp_path, kind):
    link = tmp_path / "outputs" / "latest"
    link.parent.mkdir()
    if kind == "file":
        link.write_text("my notes")
    else:
        link.mkdir()
        (link / "mine.txt").write_text("mine")
    note = update_link(link, tmp_path / "run")
    assert note and f"is a {kind}, not a link: left as it is" in note
    assert (link.read_text() == "my notes") if kind == "file" else (link / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in link.parent.iterdir()) == ["latest"]  # no stray temporary link
    (tmp_path / "run").mkdir()
    other = tmp_path / "outputs" / "latest2"
    assert update_link(other, tmp_path / "run") is None and other.resolve() == (tmp_path / "run").resolve()


def test_temporary_files_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    """A writer killed mid-write (SIGKILL) leaves its temporary file; the next start removes it, not that of a
    writer still running."""
    code = ("import sys, os, time; from dpm.io.files import write_atomic; "
            "write_atomic(sys.argv[1], lambda f: (f.write(b'x'), f.flush(), print('writing', flush=True), "
            "time.sleep(600)))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / name)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1]) for name in ("killed.ckpt", "live.ckpt")]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "writing"
        procs[0].kill()
        procs[0].wait(30)
        temps = sorted(p.name for p in tmp_path.iterdir())
        assert len(temps) == 2 and all(t.endswith(".tmp") for t in temps)
        removed = remove_stale_temps(tmp_path)
        assert [p.name for p in removed] == [t for t in temps if t.startswith(".killed.ckpt.")]
        assert [p.name for p in tmp_path.iterdir()] == [t for t in temps if t.startswith(".live.ckpt.")]
    finally:
        for p in procs:
            p.kill()
            p.wait(30)
    assert len(remove_stale_temps(tmp_path)) == 1  # the live writer's, now that it is gone too
    (tmp_path / ".user.tmp").write_text("a user's file that looks like one")
    assert remove_stale_temps(tmp_path) == [] and (tmp_path / ".user.tmp").is_file()
