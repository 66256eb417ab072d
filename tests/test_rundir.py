"""The run directory: one claim wins among processes started together, a refused command's leftovers are removed
(results never), outputs/latest never replaces a user's file or folder, and temporary files of killed writers are
cleaned at the next start."""

from __future__ import annotations

import multiprocessing as mp
import os
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


FIRST_START = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from dpm.app.rundir import claimed_for
from dpm.errors import Interrupted
run = Path({run!r})
try:
    with claimed_for(run, "training run"):
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"the first start's weights")
        raise Interrupted(140, "stopped by SIGUSR2")
except Interrupted:
    sys.exit(140)
"""


def test_a_slurm_job_started_again_takes_back_its_own_directory_and_nothing_else_does(tmp_path, monkeypatch):
    """A SLURM job stopped by a signal keeps its claim (in its own process, which then ends); SLURM's next start of
    the same job takes the directory back, everything in it kept; another job, the same start, or a command outside
    SLURM is refused."""
    from dpm.app.rundir import read_claim, requeued_run

    run = tmp_path / "run"
    run.mkdir()
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    env = {**os.environ, "SLURM_JOB_ID": "41", "SLURM_JOB_NAME": "train"}
    script = FIRST_START.format(root=str(Path(__file__).resolve().parents[1]), run=str(run))
    assert subprocess.run([sys.executable, "-c", script], env=env).returncode == 140
    record = read_claim(run)
    assert record["slurm_job"] == "41" and record["slurm_restart"] == 0  # the claim stayed, naming the job

    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    for job, restart in (("42", "1"), ("41", "0")):  # another job; the same job's first start again
        monkeypatch.setenv("SLURM_JOB_ID", job)
        monkeypatch.setenv("SLURM_RESTART_COUNT", restart)
        assert not requeued_run(run)
        with pytest.raises(ConfigError, match="left when its process"):
            claim(run)
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert requeued_run(run)
    claim(run)
    assert read_claim(run)["slurm_restart"] == 1 and requeued_run(run)  # its other tasks still see their own
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"the first start's weights"
    assert not release(run)  # a refusal later in this start removes nothing that was there
    assert (run / "checkpoints" / "last.ckpt").is_file()
