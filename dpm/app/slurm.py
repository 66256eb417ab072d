"""What SLURM tells a process about its job, from the environment srun and sbatch set (read, never written)."""

from __future__ import annotations

import os

INTERACTIVE = ("bash", "interactive")  # job names of salloc / srun --pty allocations (Lightning's rule too)


def slurm_job_id() -> str | None:
    """This SLURM job's id as scontrol names it (`<array job>_<task>` for a task of an array, as the jobs of
    hydra/launcher=slurm are), or None outside a SLURM batch job (an interactive allocation cannot be requeued)."""
    if "SLURM_JOB_ID" not in os.environ or os.environ.get("SLURM_JOB_NAME") in INTERACTIVE:
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]


def srun_started() -> bool:
    """Whether srun started this process, so that SLURM's tasks are the run's processes (Lightning's
    SLURMEnvironment.detect)."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in INTERACTIVE


def restarts() -> int:
    """How often SLURM has started this job again after a requeue; 0 for its first run."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
