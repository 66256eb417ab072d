"""Sweeps beyond one process: hydra/launcher=local (a real two-job sweep, one job failing halfway, then the report),
hydra/launcher=slurm (the sbatch script submitit would submit, and Lightning's SLURM checks), one GPU per local job,
and the W&B group of a sweep (dpm.sweeps.jobs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dpm.sweeps.report import report
from dpm.sweeps.jobs import GROUP_ENV, SweepJobs, one_gpu_per_local_job, sweep_name, visible_gpu_count
from dpm.app.compose import compose
from tests.helpers import hydra_config, hydra_job_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["trainer.max_steps=30", "trainer.val_check_interval=10", "trainer.enable_progress_bar=false", "T=6",
        "dataset.n_train=128", "dataset.n_val=32", "dataset.n_test=32", "dataset.batch_size=32",
        "callbacks.figure.every_n_val=0"]


# ---- hydra/launcher=local: a real sweep ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """Two jobs at once through submitit's local executor; optimizer.lr=1e30 makes job 1 fail halfway (20 non-finite
    steps in a row, after validations and checkpoints at steps 10 and 20)."""
    sweep = tmp_path_factory.mktemp("local_sweep")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "train.py", "-m", "hydra/launcher=local", "optimizer.lr=1e-3,1e30", *TINY,
                           f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    return sweep, proc


@pytest.mark.timeout(900)  # the first test to use local_sweep waits for the sweep
def test_local_launcher_runs_both_jobs_in_parallel_and_records_the_failure(local_sweep):
    sweep, proc = local_sweep
    assert proc.returncode != 0 and "non-finite" in proc.stderr  # Hydra reports the failed job ...
    jobs = {n: json.loads((sweep / n / ".hydra" / "job.json").read_text()) for n in ("0", "1")}
    assert jobs["0"]["status"] == "COMPLETED" and jobs["1"]["status"] == "FAILED"  # ... after both have run
    assert "non-finite" in jobs["1"]["error"]
    for job in jobs.values():  # each job ran in its own submitit process, its log folder named by its job id
        assert (sweep / ".submitit" / job["job_id"]).is_dir()
    assert jobs["0"]["job_id"] != jobs["1"]["job_id"]
    # side by side: both processes were handed their job before either job had ended (a job's own start waits for
    # its imports, and the failing one may be over within a second, so its start is no witness of that)
    ends = [j["started"] + j["seconds"] for j in jobs.values()]
    submitted = [(sweep / ".submitit" / j["job_id"] / f"{j['job_id']}_submitted.pkl").stat().st_mtime
                 for j in jobs.values()]
    assert max(submitted) < min(ends)
    done = torch.load(sweep / "0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert done["global_step"] == 30
    assert (sweep / "1" / "checkpoints" / "crash.ckpt").is_file()
    assert torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20  # each validation


@pytest.mark.timeout(900)
def test_report_of_a_sweep_whose_job_failed_halfway(local_sweep):
    sweep, _ = local_sweep
    result = report([sweep])
    rows = {r["run"]: r for r in result["rows"]}
    assert result["keys"] == ["optimizer.lr"]
    assert rows["0"]["status"] == "complete" and rows["0"]["steps"] == 30 and rows["0"]["K"] is not None
    assert rows["1"]["status"] == "failed" and "non-finite" in rows["1"]["note"] and rows["1"]["steps"] == 20
    md = result["files"]["md"].read_text()
    assert "| 1 | 1e+30 | failed |" in md and "2 runs: 1 complete, 0 incomplete, 1 failed (1)." in md
    assert result["files"]["png"].stat().st_size > 5000


# ---- hydra/launcher=local: configuration and GPUs -----------------------------------------------------------------

def test_local_launcher_config_asks_for_the_visible_gpus(tmp_path):
    launcher = hydra_config("hydra/launcher=local").hydra.launcher
    assert launcher._target_.endswith("LocalLauncher")
    assert launcher.gpus_per_node == visible_gpu_count() and launcher.tasks_per_node == 1
    assert launcher.timeout_min >= 24 * 60  # submitit's own default (60 min) would kill real trainings


def test_each_local_job_keeps_one_gpu(monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "1")
    for job, gpu in ((0, "4"), (1, "5"), (2, "7"), (3, "4")):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,7")
        assert one_gpu_per_local_job(job) == gpu and os.environ["CUDA_VISIBLE_DEVICES"] == gpu
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert one_gpu_per_local_job(3) is None  # one GPU: nothing to share out
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "2")
    assert one_gpu_per_local_job(1) is None and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"  # a DDP job keeps both
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "1")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert one_gpu_per_local_job(1) is None  # SLURM assigns GPUs itself


# ---- hydra/launcher=slurm -------------------------------------------------------------------------------------

def sbatch_script(launcher_cfg, folder: Path) -> str:
    """The sbatch file submitit writes for this launcher config, built the way hydra-submitit-launcher's launch()
    builds its executor (nothing is submitted)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    launcher = instantiate(launcher_cfg)
    params = dict(launcher.params)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=params["max_num_timeout"])
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()
                                  if k not in ("submitit_folder", "max_num_timeout")})
    return executor._executor._make_submission_file_text("python -u -m submitit.core._submit", "uid")


def test_slurm_launcher_asks_for_one_task_per_gpu_as_lightning_expects(tmp_path, monkeypatch):
    cfg = hydra_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer.devices=4",
                       "trainer.num_nodes=2", "trainer=gpu")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    fake_bin = tmp_path / "bin"  # submitit only checks that an srun exists on PATH before writing the script
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    script = sbatch_script(cfg.hydra.launcher, tmp_path / "submitit")
    sbatch = dict(line[len("#SBATCH --"):].split("=", 1) for line in script.splitlines()
                  if line.startswith("#SBATCH --") and "=" in line)
    assert sbatch["partition"] == "gpu" and sbatch["nodes"] == "2" and sbatch["time"] == "240"
    assert sbatch["ntasks-per-node"] == "4" and sbatch["gpus-per-node"] == "4"
    # Lightning reads its ranks from SLURM and refuses a layout that does not match devices x num_nodes
    from lightning.fabric.plugins.environments import SLURMEnvironment

    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", sbatch["ntasks-per-node"])
    monkeypatch.setenv("SLURM_NNODES", sbatch["nodes"])
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    assert SLURMEnvironment.detect()
    SLURMEnvironment().validate_settings(num_devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes)
    with pytest.raises(ValueError, match="ntasks-per-node"):
        SLURMEnvironment().validate_settings(num_devices=2, num_nodes=2)


# ---- W&B: one group per sweep -----------------------------------------------------------------------------------

def test_sweep_group_is_null_without_hydra_and_the_sweep_name_inside_a_sweep_job(tmp_path, monkeypatch):
    monkeypatch.delenv(GROUP_ENV, raising=False)
    cfg = compose(["logger=wandb", f"out_dir={tmp_path}"])
    assert OmegaConf.to_container(cfg, resolve=True)["logger"]["wandb"]["group"] is None  # tests, plain runs
    sweep = tmp_path / "multirun" / "schedules"
    job = hydra_job_config(sweep / "3", sweep, 3, ["logger=wandb"])
    jobs = SweepJobs()
    jobs.on_job_start(job)
    try:
        assert OmegaConf.to_container(compose(["logger=wandb"]).logger, resolve=True)["wandb"]["group"] \
            == "multirun/schedules" == sweep_name(sweep)
    finally:
        ret = JobReturn()
        ret.status, ret.return_value = JobStatus.COMPLETED, None
        jobs.on_job_end(job, ret)
    assert GROUP_ENV not in os.environ  # restored after the job
    single = hydra_job_config(tmp_path / "run", sweep, 0, ["logger=wandb"], multirun=False)
    jobs.on_job_start(single)
    assert GROUP_ENV not in os.environ  # a single run has no group
    assert sweep_name("/a/b/multirun/2025-06-01/12-00-00-123456/") == "2025-06-01/12-00-00-123456"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wandb_sweep_jobs_share_a_group_offline(tmp_path):
    """Two jobs with logger=wandb offline: both W&B runs carry the sweep's group; the report logs its artifact."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    sweep = tmp_path / "sweeps" / "wandb_group_test"
    proc = subprocess.run([sys.executable, "train.py", "-m", "logger=wandb", "seed=0,1", *TINY,
                           f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        run_files = list((sweep / job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(run_files) == 1 and b"sweeps/wandb_group_test" in run_files[0].read_bytes()
    out = subprocess.run([sys.executable, "-m", "dpm.sweeps.report", str(sweep), "--wandb"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    logged = list((sweep / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logged) == 1 and b"report.csv" in logged[0].read_bytes()


def test_srun_hint_only_for_several_processes_outside_srun(tmp_path, monkeypatch):
    """With an srun on PATH (a login node, a workstation with SLURM) Lightning hints at it whenever a Trainer is made
    outside srun; dpm keeps the hint for a run of several processes (which SLURM should start) and drops it for one."""
    import shutil
    import warnings

    from dpm.app.trainer import SRUN_HINT, make_trainer, trainer_settings

    if shutil.which("srun") is None:  # Lightning looks for the name on PATH only
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / "bin" / "srun").chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    shown = {}
    for devices in (1, 2):
        cfg = compose(["trainer.accelerator=cpu", f"trainer.devices={devices}", "logger=none", "callbacks=minimal",
                       f"out_dir={tmp_path}"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make_trainer(cfg, trainer_settings(cfg))
        shown[devices] = any(SRUN_HINT in str(w.message) for w in caught)
    assert shown == {1: False, 2: True}
