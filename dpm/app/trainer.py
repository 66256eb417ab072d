"""The Trainer as dpm sets it up: precision policy, DDP strategy, callbacks and loggers, the shape of the data
against the number of processes, and the launcher's environment restored after a run."""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from dpm.app.checkpoint import AtomicCheckpointIO
from dpm.app.lines import LineProgress
from dpm.app.slurm import srun_started
from dpm.data.base import DataModule
from dpm.errors import ConfigError

# What Lightning's DDP launcher sets in the launching process; restored after each run (processes_cleaned_up)
LAUNCH_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_WORLD_SIZE")


# Precisions that keep the schedule, the bound and the KL in float32 (the network may run in bf16 / fp16).
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "64-true", "64", "transformer-engine")
REFUSED_PRECISIONS = {"bf16-true": "casts every buffer to bf16", "16-true": "casts every buffer to fp16",
                      "bf16": "casts every buffer to bf16", "16": "is 16-mixed's old name: write 16-mixed",
                      "half": "casts every buffer to fp16"}


def _on_gpu(trainer_cfg: DictConfig) -> bool:
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def trainer_settings(cfg: DictConfig) -> dict:
    """Trainer arguments dpm decides: precision `auto` (bf16-mixed on a GPU, 32-true elsewhere), TF32 matmuls on
    a GPU unless tf32=false, DDP without re-broadcasting constant buffers, and the atomic checkpoint writer."""
    precision = str(cfg.trainer.get("precision", "auto"))
    if precision in REFUSED_PRECISIONS:
        raise ConfigError(f"trainer.precision={precision} is refused: it {REFUSED_PRECISIONS[precision]}, and the "
                          "schedule tables (float64 -> float32) and the bound must stay in float32. Use bf16-mixed "
                          "(GPU), 16-mixed or 32-true.")
    if precision == "auto":
        precision = "bf16-mixed" if _on_gpu(cfg.trainer) else "32-true"
    elif precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is unknown; valid choices: {['auto', *PRECISIONS]}")
    if _on_gpu(cfg.trainer) and cfg.get("tf32", True):
        torch.set_float32_matmul_precision("high")
    settings = {"precision": precision, "plugins": [AtomicCheckpointIO()]}
    if srun_started():  # dpm.app.requeue answers SLURM's signals; Lightning's auto-requeue would save mid-step
        from lightning.fabric.plugins.environments import SLURMEnvironment

        try:
            settings["plugins"].append(SLURMEnvironment(auto_requeue=False))
        except RuntimeError as err:  # a layout Lightning cannot read (--ntasks without --ntasks-per-node)
            raise ConfigError(f"this SLURM job's layout: {err}") from None
    strategy = cfg.trainer.get("strategy", "auto")
    if strategy == "ddp" or (strategy == "auto" and _world_size(cfg.trainer) > 1):
        from lightning.pytorch.strategies import DDPStrategy

        # the schedule tables are buffers that never change within a step: no broadcast before every forward
        settings["strategy"] = DDPStrategy(broadcast_buffers=False)
    return settings


def _children(node: DictConfig | None) -> list:
    """Instantiate each named `_target_` child of a dict node (callbacks, loggers), skipping nulls."""
    return [instantiate(child) for child in (node or {}).values() if child is not None]


def make_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The configured callbacks, plus a progress display unless the config brings its own bar or turns it off
    (trainer.enable_progress_bar=false): on a terminal Lightning's bar redrawn every `progress_bar_every` steps
    (its default redraw at every step costs more than a small model's whole step); off a terminal (a log file)
    a plain line every `progress_lines_every_s` seconds (dpm.app.lines.LineProgress)."""
    callbacks = _children(cfg.get("callbacks"))
    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        if sys.stderr.isatty():
            callbacks.append(TQDMProgressBar(refresh_rate=int(cfg.get("progress_bar_every", 10))))
        else:
            callbacks.append(LineProgress(every_s=float(cfg.get("progress_lines_every_s", 15))))
    return callbacks


# Lightning's hint, given whenever an srun is on PATH and this process was not started by it
SRUN_HINT = "The `srun` command is available on your system but is not used"


def make_trainer(cfg: DictConfig, settings: dict, extra_callbacks: tuple[L.Callback, ...] = ()) -> L.Trainer:
    """The Trainer of cfg.trainer with dpm's settings (trainer_settings), its callbacks and loggers; a setting
    Lightning refuses (an unknown strategy, devices=-1, an accelerator this machine lacks) is a ConfigError naming
    the trainer node, and so is a SLURM job whose tasks do not match it (check_slurm_layout).

    Lightning's SRUN_HINT is kept for a run of several processes started outside srun (on a SLURM allocation they
    would hang or share one node's devices), not shown for one process, which needs no srun."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    warnings.filterwarnings("default" if _world_size(cfg.trainer) > 1 else "ignore", message=SRUN_HINT)
    try:
        trainer = instantiate(cfg.trainer, callbacks=[*make_callbacks(cfg), *extra_callbacks],
                              logger=_children(cfg.get("logger")) or False, **settings)
    except InstantiationException as err:
        cause = err.__cause__
        if not isinstance(cause, (MisconfigurationException, ValueError, TypeError, RuntimeError)):
            raise
        raise ConfigError(f"trainer ({_given(cfg.trainer)}): {cause}") from None
    # the environment Lightning chose (a single-device strategy keeps none of its own)
    check_slurm_layout(trainer._accelerator_connector.cluster_environment, trainer.num_devices, trainer.num_nodes,
                       _given(cfg.trainer))
    return trainer


def _given(trainer_cfg: DictConfig) -> str:
    given = {k: trainer_cfg.get(k) for k in ("accelerator", "devices", "strategy", "num_nodes") if k in trainer_cfg}
    return ", ".join(f"trainer.{k}={v}" for k, v in given.items())


def check_slurm_layout(environment: object, devices: int, nodes: int, settings: str) -> None:
    """Under SLURM (a process srun started: Lightning's SLURMEnvironment) the processes are SLURM's tasks and
    Lightning starts none itself, nor does it compare them with its settings: a job of 1 task with
    trainer.devices=2 would train on one process, one of 2 tasks with devices=1 on two, and a job of more tasks
    than the step started would wait forever for the missing ones. So the tasks of this job step per node must
    equal `devices` and its nodes `nodes`, or the command is refused before anything is written; `settings` names
    the command's keys in the message."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not isinstance(environment, SLURMEnvironment):
        return
    env = os.environ
    step_tasks = env.get("SLURM_STEP_NUM_TASKS")
    tasks = int(step_tasks or env["SLURM_NTASKS"])
    slurm_nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
                      or 1)
    per_node = env.get("SLURM_NTASKS_PER_NODE")
    how = ("hydra/launcher=slurm asks for trainer.num_nodes nodes of trainer.devices tasks each; by hand: sbatch "
           f"--nodes={nodes} --ntasks-per-node={devices}, and srun before the command")
    if step_tasks is None and tasks > 1:
        raise ConfigError(f"this SLURM job has {tasks} tasks (SLURM_NTASKS) but this process was not started by srun: "
                          f"the other {tasks - 1} processes would never come and the run would wait forever "
                          f"({settings}). Start the command with srun ({how}).")
    if tasks != devices * nodes or slurm_nodes != nodes or (per_node is not None and int(per_node) != devices):
        raise ConfigError(
            f"the SLURM job does not match the command: SLURM started {tasks} task{'s' * (tasks != 1)} on "
            f"{slurm_nodes} node{'s' * (slurm_nodes != 1)} (--ntasks-per-node={per_node or 'unset'}, "
            f"--nodes={slurm_nodes}), the command asks for devices={devices} x num_nodes={nodes} = "
            f"{devices * nodes} process{'es' * (devices * nodes != 1)} ({settings}). Each SLURM task is one process: "
            f"--ntasks-per-node must equal the devices and --nodes the nodes ({how}).")


def _world_size(trainer_cfg: DictConfig) -> int:
    """How many processes the trainer config asks for (1 where it cannot be told before the Trainer exists)."""
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1) or 1
    if isinstance(devices, int) and devices > 0:
        return devices * nodes
    if OmegaConf.is_list(devices):
        return len(devices) * nodes
    return 1


def check_data_fits(cfg: DictConfig, dm: DataModule) -> None:
    """Each device must get a whole share of the global batch and at least one training batch."""
    world = _world_size(cfg.trainer)
    batch, n_train = dm.batch_size, len(dm.splits["train"])
    if batch % world:
        raise ConfigError(f"dataset.batch_size={batch} is the global batch and must divide evenly over "
                          f"trainer.devices x num_nodes = {world} processes (e.g. {batch - batch % world or world}).")
    if world > 1 and n_train // world < batch // world:  # one process trains on a partial batch instead
        raise ConfigError(f"the training split has {n_train} examples: with {world} processes each gets "
                          f"{n_train // world}, fewer than its batch of {batch // world} (dataset.batch_size={batch}). "
                          "Use fewer devices, a smaller dataset.batch_size or more training data.")


@contextmanager
def processes_cleaned_up() -> Iterator[None]:
    """Around a run that may launch DDP processes: afterwards the process group is destroyed (the next job of a
    multirun starts new processes; this group's peers are gone) and the launcher's environment restored
    (Lightning would take its own leftover LOCAL_RANK for an external launcher's)."""
    launch_env = {key: os.environ.get(key) for key in LAUNCH_ENV}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in launch_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
