"""evaluate(cfg, out_dir): restore a model from its checkpoint and run one evaluate task (dpm.tasks) in out_dir."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from dpm.app.build import restore
from dpm.app.checkpoint import WEIGHTS, load_checkpoint
from dpm.app.checks import EVAL_RULES, check_ranges
from dpm.app.rundir import claimed_for, global_rank_from_env, write_hydra_record
from dpm.app.trainer import check_slurm_layout, processes_cleaned_up
from dpm.app.trust import TASK_SIGNATURE, trusted_packages, trusted_task
from dpm.data.base import SPLITS
from dpm.errors import ConfigError
from dpm.tasks import TASKS, Task


def check_eval_config(cfg: DictConfig) -> None:
    """The settings evaluate.py's tasks share, before the checkpoint is read (each task checks its own, dpm.tasks;
    task=own checks that its module is trusted and meets the task contract)."""
    if cfg.get("task") != OWN and cfg.get("task") not in TASKS:
        raise ConfigError(f"task={cfg.get('task')!r} is unknown; valid choices: {[*TASKS, OWN]}")
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r} is unknown; valid choices: {list(SPLITS)}")
    if cfg.weights not in WEIGHTS:
        raise ConfigError(f"weights={cfg.weights!r} is unknown; valid choices: {list(WEIGHTS)}")
    check_ranges(cfg, EVAL_RULES)


def eval_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is available here; use device=cpu")
    return device


def fabric_for_devices(cfg: DictConfig):
    """A lightning.fabric.Fabric (launched by the caller) for evaluate.py devices=N [num_nodes=M] (a task that
    runs on several processes: bound), or None for one process.

    Fabric starts the other processes of this node by re-running this command (as the Trainer does for train.py),
    or joins those that torchrun or srun started (then devices x num_nodes must match them: a SLURM job that does
    not is refused, dpm.app.trainer.check_slurm_layout); gloo on CPUs, NCCL on GPUs."""
    devices, nodes = cfg.get("devices", 1), cfg.get("num_nodes", 1)
    if devices == 1 and nodes == 1:
        return None
    asked = f"devices={devices}" + (f" num_nodes={nodes}" if nodes != 1 else "")
    if not TASKS[cfg.task].processes:
        many = [name for name, task in TASKS.items() if task.processes]
        raise ConfigError(f"{asked} applies to task={'|'.join(many)}; task={cfg.task} runs in one process (choose its "
                          "device with device=...)")
    if cfg.device != "auto":
        raise ConfigError(f"device={cfg.device} chooses the one device of a single process; with {asked} choose the "
                          "kind with accelerator=cpu|gpu|auto")
    from lightning.fabric import Fabric
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        fabric = Fabric(accelerator=cfg.get("accelerator", "auto"), devices=devices, num_nodes=nodes,
                        strategy="ddp", precision="32-true")
    except (MisconfigurationException, ValueError, RuntimeError) as err:
        raise ConfigError(f"{asked} accelerator={cfg.get('accelerator', 'auto')}: {err}") from None
    check_slurm_layout(fabric.strategy.cluster_environment, devices, nodes, f"devices={devices}, num_nodes={nodes}")
    return fabric


DATA_CHOICES = ("data_dir", "download", "cache")  # where the data live and whether to fetch or write them


def data_choices(run_config: dict, cfg: DictConfig) -> str:
    """Set the checkpoint's dataset node's data_dir, download and cache (in place) from the command line: the
    checkpoint's data_dir is only a default (evaluate.py data_dir=DIR replaces it), and it never downloads or writes
    a cache unless the command line asks (download=true, cache=true), whatever the checkpoint says. Returns the
    line that says what was chosen."""
    dataset = run_config.get("dataset", {})
    parts = []
    if "data_dir" in dataset:
        given = cfg.get("data_dir")
        if given is not None:
            dataset["data_dir"] = str(given)
        parts.append(f"data_dir={dataset['data_dir']} ({'given' if given is not None else 'the checkpoint’s; data_dir=DIR to change'})")
    for key in ("download", "cache"):
        if key in dataset:
            checkpoint_value, dataset[key] = dataset[key], bool(cfg.get(key, False))
            parts.append(f"{key}={str(dataset[key]).lower()}" + (
                f" (the checkpoint had {str(checkpoint_value).lower()}; {key}=true to allow)"
                if bool(checkpoint_value) and not dataset[key] else ""))
    return f"data: {', '.join(parts)}" if parts else "data: generated or bundled (nothing read from or written to disk)"


def stop_launched(fabric, wait_s: float = 30.0) -> None:
    """SIGTERM to the processes Fabric started from this one (rank 0 of devices=N), and a wait for them to end, so
    that none is left running (and printing) after the command has ended."""
    import signal
    import subprocess

    procs = getattr(fabric.strategy.launcher, "procs", None) or []
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()


def evaluate(cfg: DictConfig, out_dir: str | Path, hydra_record: dict[str, str] | None = None) -> dict:
    """Restore the checkpoint's model and run the task cfg.task names (dpm.tasks.TASKS: bound on `devices`
    processes, sample, the posterior tasks, parzen) in out_dir, its settings checked before anything is written.
    out_dir must not hold earlier results."""
    out_dir = Path(out_dir)
    check_eval_config(cfg)
    task = own_task(cfg) if cfg.task == OWN else TASKS[cfg.task]
    device = eval_device(cfg.device)
    fabric = fabric_for_devices(cfg)
    trusted = trusted_packages(cfg)
    ckpt = load_checkpoint(None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path, trusted=trusted)
    print(data_choices(ckpt["dpm_config"], cfg), flush=True)
    dm, module, weights = restore(ckpt, cfg.weights, trusted)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.weights = weights  # the weights loaded (auto resolved), as the results record them
    settings = task.check(cfg, dm, module.diffusion)
    rank0 = global_rank_from_env() == 0  # processes Fabric starts later write nothing of their own
    with claimed_for(out_dir, "evaluation", rank0):
        if rank0 and hydra_record:
            write_hydra_record(out_dir, hydra_record)
        if fabric is None:
            return task.run(module.to(device).eval(), dm, cfg, out_dir, device, settings)
        with processes_cleaned_up():
            fabric.launch()
            try:
                return task.run(module.to(fabric.device).eval(), dm, cfg, out_dir, fabric.device, settings,
                                fabric=fabric)
            except BaseException:  # SIGTERM, Ctrl-C or an error on rank 0: the processes it started stop too
                stop_launched(fabric)
                raise


OWN = "own"  # task=own own.module=mypkg.mytask trust=[mypkg] (conf/task/own.yaml)


def own_task(cfg: DictConfig) -> Task:
    """The user's task module (own.module, in a package named by trust) as a Task: its run checked against
    TASK_SIGNATURE before the checkpoint is read, its result checked to be a dict."""
    name = OmegaConf.select(cfg, "own.module", throw_on_missing=False)
    if not isinstance(name, str) or OmegaConf.is_missing(cfg.own, "module"):
        raise ConfigError("task=own needs own.module=<your task module>, e.g. task=own own.module=mypkg.mytask "
                          f"trust=[mypkg] (the module defines {TASK_SIGNATURE})")
    run = trusted_task(name, trusted_packages(cfg))

    def run_checked(module, dm, cfg, out_dir, device, settings) -> dict:
        result = run(module, dm, cfg, out_dir, device)
        if not isinstance(result, dict):
            raise ConfigError(f"own.module={name!r} breaks the task contract: {TASK_SIGNATURE}, but its run "
                              f"returned a {type(result).__name__}")
        return result

    return Task(check=lambda cfg, dm, diffusion: {}, run=run_checked)
