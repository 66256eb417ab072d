"""evaluate(cfg, out_dir): restore a model from its checkpoint and run one evaluate task in out_dir."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dpm.app.build import restore
from dpm.app.checkpoint import WEIGHTS, load_checkpoint
from dpm.app.checks import EVAL_RULES, check_ranges
from dpm.app.rundir import claim, global_rank_from_env, write_hydra_record
from dpm.app.trainer import processes_cleaned_up
from dpm.app.trust import TASK_SIGNATURE, is_trusted, trusted_packages, trusted_task
from dpm.core.bound import ESTIMATORS
from dpm.data.base import SPLITS, DataModule
from dpm.errors import ConfigError
from dpm.figures import draw
from dpm.io.files import write_json
from dpm.io.progress import Progress
from dpm.model.module import DiffusionModule
from dpm.tasks import TASKS as POSTERIOR_TASKS
from dpm.tasks.bound import bound_over_split, format_table

TASKS = ("bound", "sample", *POSTERIOR_TASKS)


def check_eval_config(cfg: DictConfig) -> None:
    """evaluate.py's own settings, before the checkpoint is read."""
    if cfg.task not in TASKS and not is_trusted(str(cfg.task), trusted_packages(cfg)):
        raise ConfigError(f"task={cfg.task!r} is unknown; valid choices: {list(TASKS)}, or your own task module "
                          "in a package you trust: task=mypkg.mytask trust=[mypkg] (it defines "
                          f"{TASK_SIGNATURE})")
    if cfg.task not in TASKS:
        trusted_task(str(cfg.task), trusted_packages(cfg))  # its contract, before the checkpoint is read
    if cfg.estimator not in ESTIMATORS:
        raise ConfigError(f"estimator={cfg.estimator!r} is unknown; valid choices: {list(ESTIMATORS)}")
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
    """A lightning.fabric.Fabric (launched by the caller) for evaluate.py devices=N (task=bound), or None for one
    process.

    Fabric starts the other processes by re-running this command (as the Trainer does for train.py) or joins
    those torchrun started (SLURM too, untried here); gloo on CPUs, NCCL on GPUs."""
    devices = cfg.get("devices", 1)
    if devices == 1:
        return None
    if cfg.task != "bound":
        raise ConfigError(f"devices={devices} applies to task=bound; task={cfg.task} runs in one process "
                          "(choose its device with device=...)")
    if cfg.device != "auto":
        raise ConfigError(f"device={cfg.device} chooses the one device of a single process; with devices={devices} "
                          "choose the kind with accelerator=cpu|gpu|auto")
    from lightning.fabric import Fabric
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        fabric = Fabric(accelerator=cfg.get("accelerator", "auto"), devices=devices,
                        strategy="ddp", precision="32-true")
    except (MisconfigurationException, ValueError, RuntimeError) as err:
        raise ConfigError(f"devices={devices} accelerator={cfg.get('accelerator', 'auto')}: {err}") from None
    return fabric


def evaluate(cfg: DictConfig, out_dir: str | Path, hydra_record: dict[str, str] | None = None) -> dict:
    """task=bound: K on a split, written to out_dir/eval.json and printed beside the paper's Table 1 (on
    `devices` processes); task=sample: a figure of samples with a fixed seed in out_dir; the posterior tasks
    (dpm.tasks). out_dir must not hold earlier results."""
    out_dir = Path(out_dir)
    check_eval_config(cfg)
    device = eval_device(cfg.device)
    fabric = fabric_for_devices(cfg)
    trusted = trusted_packages(cfg)
    ckpt = load_checkpoint(None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path, trusted=trusted)
    dm, module, weights = restore(ckpt, cfg.weights, trusted)
    rank0 = global_rank_from_env() == 0
    if rank0:  # processes Fabric starts later write nothing of their own
        claim(out_dir, "evaluation")
        if hydra_record:
            write_hydra_record(out_dir, hydra_record)
    if fabric is not None:
        with processes_cleaned_up():
            fabric.launch()
            return _bound(cfg, module.to(fabric.device).eval(), dm, weights, fabric.device, out_dir, fabric)
    module.to(device).eval()
    if cfg.task == "sample":
        with Progress(module.diffusion.T, "sampling", unit="step", enabled=cfg.get("progress", True)) as bar:
            path = draw(module, dm, out_dir / "samples.png", cfg.seed, on_step=bar.update)
        return {"figure": str(path)}
    if cfg.task in POSTERIOR_TASKS:  # inpaint, denoise, complete, constrain, parzen (dpm.tasks)
        return POSTERIOR_TASKS[cfg.task](module, dm, cfg, out_dir, device)
    if cfg.task not in TASKS:  # the user's own, from a trusted package (dpm.app.trust)
        result = trusted_task(cfg.task, trusted)(module, dm, cfg, out_dir, device)
        if not isinstance(result, dict):
            raise ConfigError(f"task={cfg.task!r} breaks the task contract: {TASK_SIGNATURE}, but it returned a "
                              f"{type(result).__name__}")
        return result
    return _bound(cfg, module, dm, weights, device, out_dir)


def _bound(cfg: DictConfig, module: DiffusionModule, dm: DataModule, weights: str, device: torch.device,
           out_dir: Path, fabric=None) -> dict:
    result = bound_over_split(module, dm, split=cfg.split, estimator=cfg.estimator, n_t=cfg.n_t,
                              batch_size=cfg.batch_size, limit=cfg.limit, seed=cfg.seed, device=device,
                              progress=cfg.get("progress", True), fabric=fabric)
    result.update(weights=weights, checkpoint=str(cfg.ckpt_path),
                  processes=fabric.world_size if fabric is not None else 1)
    if fabric is not None and fabric.global_rank != 0:
        return result
    write_json(out_dir / "eval.json", result)
    print(format_table(result))
    return {**result, "eval": str(out_dir / "eval.json")}
