"""The cluster path against a real SLURM scheduler (scripts/slurm-local.sh up: one node on this machine): a sweep
through hydra/launcher=slurm, a 2-task DDP job started by srun, and layouts that do not match the trainer. Skipped
with the reason when no controller answers (tests/conftest.py)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dpm.sweeps.report import report

ROOT = Path(__file__).resolve().parents[1]
TINY = ["trainer.accelerator=cpu", "trainer.max_steps=30", "trainer.val_check_interval=10", "T=6",
        "trainer.enable_progress_bar=false", "dataset.n_train=128", "dataset.n_val=32", "dataset.n_test=32",
        "dataset.batch_size=32", "callbacks=minimal", "latest_link=null", "progress=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
        "DEADLINE")

pytestmark = pytest.mark.slurm


def job_info(job_id: str) -> dict[str, str]:
    """scontrol's record of a job (kept MinJobAge seconds after it ended): {"JobState": ..., "ExitCode": ...}."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def wait_job(job_id: str, timeout_s: float = 240) -> dict[str, str]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        info = job_info(job_id)
        if info["JobState"] in DONE:
            return info
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    pytest.fail(f"SLURM job {job_id} did not end within {timeout_s} s: {job_info(job_id)}")


def sbatch(script: str, tmp_path: Path) -> str:
    path = tmp_path / "job.sh"
    path.write_text(script)
    out = subprocess.run(["sbatch", "--parsable", f"--chdir={ROOT}", f"--output={tmp_path}/slurm-%j.out", str(path)],
                         capture_output=True, text=True, env=ENV, check=True)
    return out.stdout.strip().split(";")[0]


# ---- a: a sweep through hydra/launcher=slurm ---------------------------------------------------------------------

@pytest.mark.timeout(600)
def test_sweep_of_two_slurm_jobs_trains_each_and_reports_both(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1",
                           "hydra.launcher.timeout_min=10", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=540, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    array_ids = set()
    for job in ("0", "1"):
        record = json.loads((sweep / job / ".hydra" / "job.json").read_text())
        assert record["status"] == "COMPLETED"
        array_id, task = record["job_id"].split("_")  # a SLURM array job id, one task per sweep job
        assert task == job
        array_ids.add(array_id)
        assert json.loads((sweep / job / "eval.json").read_text())["n_examples"] == 32
        assert torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30
    assert len(array_ids) == 1
    (array_id,) = array_ids
    for job in ("0", "1"):
        info = wait_job(f"{array_id}_{job}", timeout_s=60)  # the result is written just before the job ends
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", info
    submission = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=1" in submission and "gpus" not in submission  # trainer.accelerator=cpu
    out = subprocess.run([sys.executable, "-m", "dpm.report", str(sweep)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["run"]: r for r in report([sweep])["rows"]}
    assert sorted(rows) == ["0", "1"]
    for job, row in rows.items():
        assert row["status"] == "complete" and row["steps"] == 30
        assert row["K"] == pytest.approx(json.loads((sweep / job / "eval.json").read_text())["K"])
    assert rows["0"]["K"] != rows["1"]["K"]  # two seeds, two trainings


# ---- b: one job of 2 tasks started by srun -----------------------------------------------------------------------

@pytest.mark.timeout(600)
def test_two_task_srun_job_trains_ddp_with_slurm_ranks_and_evaluates_the_same_K(tmp_path):
    """2 SLURM tasks = Lightning's 2 DDP processes, ranks from SLURM: the weights equal, bit for bit, those of the
    same training on 2 processes that Lightning started itself (a task that took rank 0 twice, or world size 1,
    would train otherwise); the bound on 2 SLURM tasks equals the bound on 1 process."""
    run = tmp_path / "run"
    ddp = [*TINY, "trainer.devices=2", "trainer.strategy=ddp"]
    job = sbatch(f"""#!/bin/bash
#SBATCH --job-name=dpm-ddp
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=10
srun --label {sys.executable} train.py {' '.join(ddp)} hydra.run.dir={run}
srun --label {sys.executable} evaluate.py ckpt_path={run}/checkpoints/last.ckpt devices=2 accelerator=cpu \\
    progress=false hydra.run.dir={tmp_path}/eval_2_tasks
""", tmp_path)
    local = subprocess.run([sys.executable, "train.py", *ddp, f"hydra.run.dir={tmp_path}/local"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, env=ENV)
    assert local.returncode == 0, local.stderr[-3000:]
    info = wait_job(job)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert "srun` command is available" not in log
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts[-1] == "last.ckpt" and len(ckpts) == 2 and ckpts[0].startswith("best-")  # written once, by rank 0
    slurm_w = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    local_w = torch.load(tmp_path / "local" / "checkpoints" / "last.ckpt", weights_only=True)
    assert slurm_w["global_step"] == local_w["global_step"] == 30
    for key, value in local_w["state_dict"].items():
        assert torch.equal(value, slurm_w["state_dict"][key]), key
    two = json.loads((tmp_path / "eval_2_tasks" / "eval.json").read_text())
    assert two["processes"] == 2
    one_proc = subprocess.run([sys.executable, "evaluate.py", f"ckpt_path={run}/checkpoints/last.ckpt",
                               "progress=false", f"hydra.run.dir={tmp_path}/eval_1"], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env=ENV)
    assert one_proc.returncode == 0, one_proc.stderr[-3000:]
    one = json.loads((tmp_path / "eval_1" / "eval.json").read_text())
    at_end = json.loads((run / "eval.json").read_text())
    for key in ("K", "K_stderr", "L_null", "n_examples"):
        assert two[key] == pytest.approx(one[key], rel=1e-6) and one[key] == pytest.approx(at_end[key], rel=1e-6), key


# ---- d: a job whose tasks do not match the trainer is refused before training ---------------------------------------

@pytest.mark.timeout(600)
def test_slurm_layout_that_does_not_match_the_trainer_is_refused_naming_both(tmp_path):
    srun = ["srun", "--nodes=1", "--cpus-per-task=1", "--time=5"]
    cases = {  # name: (srun's layout, train.py's settings, what the message must name)
        "devices": (["--ntasks-per-node=1"], ["trainer.devices=2", "trainer.strategy=ddp"],
                    ("--ntasks-per-node=1", "devices=2", "trainer.devices=2")),
        "tasks": (["--ntasks-per-node=2"], ["trainer.devices=1"], ("--ntasks-per-node=2", "trainer.devices=1")),
        "nodes": (["--ntasks-per-node=1"], ["trainer.num_nodes=2", "trainer.strategy=ddp"],
                  ("--nodes=1", "num_nodes=2", "trainer.num_nodes=2")),
    }
    # a batch script of 2 tasks that runs python without srun: Lightning would wait forever for the second task
    no_srun = sbatch(f"""#!/bin/bash
#SBATCH --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=5
{sys.executable} train.py {' '.join(TINY)} trainer.devices=2 trainer.strategy=ddp hydra.run.dir={tmp_path}/no_srun
""", tmp_path)
    procs = {name: subprocess.Popen([*srun, *layout, sys.executable, "train.py", *TINY, *settings,
                                     f"hydra.run.dir={tmp_path / name}"], cwd=ROOT, env=ENV, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (layout, settings, _) in cases.items()}
    errors = {name: (proc.communicate(timeout=300)[1], proc.returncode) for name, proc in procs.items()}
    info = wait_job(no_srun)
    errors["no_srun"] = ((tmp_path / f"slurm-{no_srun}.out").read_text(), int(info["ExitCode"].split(":")[0]))
    cases["no_srun"] = (None, None, ("SLURM_NTASKS", "not started by srun", "trainer.devices=2"))
    for name, (err, code) in errors.items():
        assert code == 2, (name, err[-3000:])
        assert all(word in err for word in cases[name][2]), (name, err[-3000:])
        assert "Traceback" not in err, (name, err[-3000:])
        assert not (tmp_path / name / "checkpoints").exists()  # refused before training


# ---- c: time limits, preemption, scancel ---------------------------------------------------------------------------

def ckpt_step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"] if path.is_file() else -1


def wait_for(what: str, check, timeout_s: float = 240, poll_s: float = 0.2):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = check()
        if found:
            return found
        time.sleep(poll_s)
    pytest.fail(f"waited {timeout_s} s for {what}")


STEPS = 1000
# 4096 examples: 128 steps an epoch, so that a signal seldom lands on an epoch's last step (a run stopped by a
# signal exactly there does not resume bit for bit, with or without SLURM: docs/cluster.md)
LONG = [a for a in TINY if not a.startswith(("trainer.max_steps", "trainer.val_check_interval", "dataset.n_train"))] + [
    f"trainer.max_steps={STEPS}", "trainer.val_check_interval=20", "seed=3", "dataset.n_train=4096"]


@pytest.mark.timeout(900)
def test_sweep_job_warned_then_requeued_resumes_by_itself_in_its_directory_bit_exact(tmp_path):
    """A sweep job gets SIGUSR2 (what SLURM sends signal_delay_s before the time limit; `scancel --signal` sends it
    now), requeues itself and resumes; then `scontrol requeue` (a preemption's SIGTERM) stops it and SLURM starts it
    a third time. It ends in its own directory with the weights of an uninterrupted run, bit for bit."""
    sweep = tmp_path / "sweep"
    head = subprocess.Popen([sys.executable, "train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1",
                             "hydra.launcher.timeout_min=10", *LONG, f"hydra.sweep.dir={sweep}"], cwd=ROOT, env=ENV,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    straight = subprocess.Popen([sys.executable, "train.py", *LONG, f"hydra.run.dir={tmp_path / 'straight'}"], cwd=ROOT,
                                env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        last = sweep / "0" / "checkpoints" / "last.ckpt"
        wait_for("the job's first checkpoint", lambda: ckpt_step(last) > 0)
        job = next(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir())  # the SLURM job id
        log = sweep / ".submitit" / job / f"{job}_0_log.err"
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        warned = int(wait_for("the stop on SIGUSR2", lambda: re.search(
            r"stopped by SIGUSR2 at step (\d+).*holds step \1.*requeued", log.read_text()))[1])
        resumed = wait_for("the restart", lambda: re.search(
            r"started again \(restart 1\).*? from step (\d+)", log.read_text()))
        assert int(resumed[1]) == warned
        wait_for("a checkpoint after the restart", lambda: ckpt_step(last) > warned)
        subprocess.run(["scontrol", "requeue", job], check=True)
        stopped = int(wait_for("the stop on SIGTERM", lambda: re.search(
            r"stopped by SIGTERM at step (\d+)", log.read_text()))[1])
        resumed = wait_for("the second restart", lambda: re.search(
            r"started again \(restart 2\).*? from step (\d+)", log.read_text()))
        assert int(resumed[1]) == stopped > warned
        _, err = head.communicate(timeout=600)
        assert head.returncode == 0, err[-3000:]
        _, err = straight.communicate(timeout=300)
        assert straight.returncode == 0, err[-3000:]
    finally:
        for proc in (head, straight):
            proc.kill()
    print(f"signalled (SIGUSR2) at step {warned}, resumed at {warned}; requeued (SIGTERM) at step {stopped}, "
          f"resumed at {stopped}")
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["global_step"] == b["global_step"] == STEPS
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert job_info(job)["Restarts"] == "2"
    assert sorted(p.name for p in sweep.iterdir()) == [".submitit", "0", "multirun.yaml"]  # no second run directory
    assert json.loads((sweep / "0" / ".hydra" / "job.json").read_text())["status"] == "COMPLETED"
    rows = report([sweep])["rows"]
    assert len(rows) == 1 and rows[0]["status"] == "complete"
    assert rows[0]["K"] == pytest.approx(json.loads((sweep / "0" / "eval.json").read_text())["K"])
    logged = [int(r["step"]) for r in csv.DictReader(open(sweep / "0" / "logs" / "metrics.csv")) if r.get("val/K")]
    assert min(logged) < warned and max(logged) >= STEPS - 1  # the metrics of all three parts, in one file


@pytest.mark.timeout(600)
def test_scancel_ends_the_job_with_last_ckpt_and_exit_143(tmp_path):
    run = tmp_path / "run"
    job = sbatch(f"""#!/bin/bash
#SBATCH --nodes=1 --ntasks-per-node=1 --cpus-per-task=1 --time=10
srun {sys.executable} train.py {' '.join(LONG)} trainer.max_steps=100000 hydra.run.dir={run}
""", tmp_path)
    wait_for("the first checkpoint", lambda: ckpt_step(run / "checkpoints" / "last.ckpt") > 0)
    subprocess.run(["scancel", job], check=True)
    info = wait_job(job)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", log[-3000:]
    step = int(re.search(r"stopped by SIGTERM at step (\d+): \S+last.ckpt holds step \1", log)[1])
    assert "task 0: Exited with exit code 143" in log  # srun's report of the training's exit code
    assert ckpt_step(run / "checkpoints" / "last.ckpt") == step > 0
