"""Sweeps: what a Hydra job records about itself, the W&B group of a sweep, one GPU per job on a local launcher.

`SweepJobs` is a Hydra callback (conf/hydra/default.yaml); it runs inside each job, whichever launcher started it
(basic, submitit local, SLURM), so it sees the job's own config:
- it writes `<run dir>/.hydra/job.json` = {"status": "RUNNING" | "COMPLETED" | "FAILED", "error", "seconds", ...},
  which `python -m dpm.report` reads to mark runs that failed or never finished;
- in a multirun it sets DPM_SWEEP_GROUP to the sweep's name, which conf/logger/wandb.yaml reads with
  ${oc.env:DPM_SWEEP_GROUP,null}, so every job of a sweep lands in one W&B group (a config composed without Hydra's
  runtime, as tests do, resolves it to null instead of failing on a ${hydra:...} interpolation);
- under submitit's local executor it narrows CUDA_VISIBLE_DEVICES to one GPU per job (the executor gives every job
  the same GPUs), job k getting the (k mod n)-th.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dpm.io.files import write_json
from dpm.app.rundir import claimed, holds_results

GROUP_ENV = "DPM_SWEEP_GROUP"
JOB_FILE = "job.json"


def sweep_name(sweep_dir: str | Path) -> str:
    """A sweep's name: the last two parts of its directory, e.g. multirun/2025-06-01/12-00-00-123456 ->
    "2025-06-01/12-00-00-123456", /scratch/sweeps/schedules -> "sweeps/schedules" (the same whether the path is
    relative or absolute, so the report finds the group the jobs logged to)."""
    parts = Path(os.path.normpath(str(sweep_dir))).parts
    return "/".join(parts[-2:]) if parts else ""


def visible_gpu_count() -> int:
    """GPUs this process may use (for hydra/launcher=local's gpus_per_node); 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def slurm_gpus(accelerator: str, devices: Any) -> Any:
    """hydra/launcher=slurm's gpus_per_node: none for trainer.accelerator=cpu (a CPU node has no GPU to give, and
    SLURM would refuse the job), else trainer.devices (one GPU per task)."""
    return None if str(accelerator) == "cpu" else devices


OmegaConf.register_new_resolver("dpm.gpu_count", visible_gpu_count, replace=True)
OmegaConf.register_new_resolver("dpm.slurm_gpus", slurm_gpus, replace=True)


def _is_rank_zero() -> bool:
    """Lightning's DDP children and SLURM's extra tasks run the Hydra job too; only rank 0 writes."""
    return all(int(os.environ.get(key, "0") or 0) == 0 for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def one_gpu_per_local_job(job_num: int) -> str | None:
    """Under submitit's local executor with one task per job and several GPUs visible, keep the (job_num mod n)-th
    in CUDA_VISIBLE_DEVICES (before anything in the job touches CUDA); returns what it set, or None."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or os.environ.get("SUBMITIT_LOCAL_NTASKS", "1") != "1" \
            or len(visible) < 2:
        return None
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[job_num % len(visible)]
    return os.environ["CUDA_VISIBLE_DEVICES"]


class SweepJobs(Callback):
    """Hydra callback: records each job's status in .hydra/job.json, names the W&B group of a sweep, assigns GPUs."""

    def __init__(self) -> None:
        self.start = 0.0
        self.previous_group: str | None = None
        self.gpu: str | None = None

    @staticmethod
    def _job_file(config: DictConfig) -> Path | None:
        hydra = config.hydra
        out_dir = Path(hydra.runtime.output_dir)
        # Never into a directory that holds another run: only one this job claimed, or one where it left nothing but
        # its log (a job refused before it claimed the directory; its record is what the report shows of it).
        if not _is_rank_zero() or not (claimed(out_dir) or (out_dir.is_dir() and not holds_results(out_dir))):
            return None
        return out_dir / (hydra.output_subdir or ".hydra") / JOB_FILE

    def _write(self, config: DictConfig, **fields: Any) -> None:
        path = self._job_file(config)
        if path is None:
            return
        hydra = config.hydra
        write_json(path, {"job_num": OmegaConf.select(hydra, "job.num"), "job_id": OmegaConf.select(hydra, "job.id"),
                          "host": socket.gethostname(), "mode": str(hydra.mode),
                          "overrides": list(OmegaConf.select(hydra, "overrides.task", default=[]) or []), **fields})

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.start = time.time()
        self.previous_group = os.environ.get(GROUP_ENV)
        if str(config.hydra.mode) == "RunMode.MULTIRUN":
            os.environ[GROUP_ENV] = sweep_name(config.hydra.sweep.dir)
            gpu = one_gpu_per_local_job(int(config.hydra.job.num))
        else:
            gpu = None
        self.gpu = gpu  # the record is written at the job's end: before dpm.app.train claims the directory, it may be
        # another run's (dpm.sweeps.runs reads a run without a record as incomplete)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        status = getattr(job_return.status, "name", str(job_return.status))
        error = job_return._return_value if status == "FAILED" else None  # the exception; .return_value re-raises
        self._write(config, status=status, started=self.start, seconds=time.time() - self.start, gpu=self.gpu,
                    error=None if error is None else f"{type(error).__name__}: {error}")
        if self.previous_group is None:
            os.environ.pop(GROUP_ENV, None)
        else:
            os.environ[GROUP_ENV] = self.previous_group
