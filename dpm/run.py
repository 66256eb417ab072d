"""train(cfg, out_dir) and evaluate(cfg, out_dir): build everything from a composed config and run it.

No Hydra runtime is needed here (train.py / evaluate.py pass the run directory), so tests call these directly.
Every check that can fail runs before the first file is written (dpm.checks); a run directory holds one run
(dpm.rundir); a resumed run applies or refuses each changed setting (dpm.resume).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import lightning as L
import torch
from filelock import FileLock
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from dpm.bound import ESTIMATORS
from dpm.checkpoint import WEIGHTS, AtomicCheckpointIO, load_checkpoint, restore
from dpm.checks import EVAL_RULES, ConfigError, check_ranges, check_train_config
from dpm.data.base import SPLITS, DataModule
from dpm.evaluation import bound_over_split, format_table
from dpm.figures import draw
from dpm.files import write_json, write_text
from dpm.module import DiffusionModule, NonFiniteStop
from dpm.progress import Progress
from dpm.resume import check_resume
from dpm.rundir import check_writable, claim, global_rank_from_env, write_hydra_record
from dpm.tasks import TASKS as POSTERIOR_TASKS

TASKS = ("bound", "sample", *POSTERIOR_TASKS)


class Interrupted(Exception):
    """Training stopped by SIGINT (exit 130) or SIGTERM (exit 143) after writing last.ckpt."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RunFailed(RuntimeError):
    """A run that cannot be called a success (no optimizer step, too many non-finite steps); exit 1."""


# What Lightning's DDP launcher sets in the launching process; restored after each run (see train)
LAUNCH_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_WORLD_SIZE")


def build(cfg: DictConfig, datamodule_state: dict | None = None) -> tuple[DataModule, DiffusionModule]:
    """The data module (set up) and the LightningModule a config describes."""
    check_train_config(cfg)
    dm: DataModule = instantiate(cfg.dataset)
    schedule = instantiate(cfg.schedule, T=cfg.T)
    diffusion = instantiate(cfg.diffusion, schedule=schedule)
    if datamodule_state is not None:
        dm.load_state_dict(datamodule_state)
    # Processes started together (torchrun, SLURM) would race on a download or a cache: one at a time; the
    # first prepares, the others find the files there.
    key = hashlib.sha1(json.dumps(OmegaConf.to_container(cfg.dataset, resolve=True), sort_keys=True,
                                  default=str).encode()).hexdigest()[:16]
    with FileLock(Path(tempfile.gettempdir()) / f"dpm-prepare-{key}.lock"):
        dm.prepare_data()
    dm.setup()
    diffusion.check_data(dm.splits["train"])
    net = instantiate(cfg.net, data_shape=dm.data_shape, n_outputs=diffusion.n_outputs, T=cfg.T)
    module = DiffusionModule(
        net, diffusion, optimizer=instantiate(cfg.optimizer),
        lr_scheduler=instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None,
        units_per_example=dm.units_per_example, unit=dm.unit, val_n_t=cfg.val_n_t,
        run_config=OmegaConf.to_container(cfg, resolve=True), seed=cfg.get("seed") or 0, dequantize=dm.dequantize)
    if cfg.get("compile"):
        module.net.compile()  # in place: the network only, and its state_dict keys stay those of a plain one
    return dm, module


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
    """The configured callbacks, plus Lightning's progress bar redrawn every `progress_bar_every` steps (its
    default redraw at every step costs more than a small model's whole step) unless the config brings its own
    bar or turns it off (trainer.enable_progress_bar=false)."""
    callbacks = _children(cfg.get("callbacks"))
    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(TQDMProgressBar(refresh_rate=int(cfg.get("progress_bar_every", 10))))
    return callbacks


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


def train(cfg: DictConfig, out_dir: str | Path, hydra_record: dict[str, str] | None = None) -> dict:
    """Fit the model of cfg into out_dir (checkpoints, logs, figures, config.yaml), then evaluate it on the test
    split (eval.json) unless test_at_end is false. Returns the final metrics and the paths written."""
    out_dir = Path(out_dir)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.out_dir = str(out_dir)
    check_train_config(cfg)
    ckpt_path = cfg.get("ckpt_path")
    changes, start_step = [], 0
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        new = OmegaConf.to_container(cfg, resolve=True)
        changes = check_resume(ckpt["dpm_config"], new, str(ckpt_path))
        start_step = int(ckpt.get("global_step", 0))
        del ckpt
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    settings = trainer_settings(cfg)
    dm, module = build(cfg)
    check_data_fits(cfg, dm)
    rank0 = global_rank_from_env() == 0
    if rank0:  # the DDP processes Lightning starts later share rank 0's directory
        claim(out_dir, "training run")
        check_writable(out_dir / "checkpoints", "hydra.run.dir")
        if hydra_record:
            write_hydra_record(out_dir, hydra_record)
        config = dict(module.run_config)
        if ckpt_path is not None:
            config["resumed_from"] = str(ckpt_path)
            config["changed_on_resume"] = {k: new_v for k, _, new_v in changes}
        write_text(out_dir / "config.yaml", OmegaConf.to_yaml(config))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=make_callbacks(cfg),
                                     logger=_children(cfg.get("logger")) or False, **settings)
    for logger in trainer.loggers:  # the resolved config beside the metrics (hparams.yaml, W&B config)
        logger.log_hyperparams(module.run_config)
    try:
        with processes_cleaned_up():
            return _fit_and_test(cfg, trainer, module, dm, out_dir, start_step)
    finally:
        if any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers):
            import wandb

            wandb.finish()  # or every job of a multirun logs into one W&B run


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


def _fit_and_test(cfg: DictConfig, trainer: L.Trainer, module: DiffusionModule, dm: DataModule,
                  out_dir: Path, start_step: int) -> dict:
    ckpt_path = cfg.get("ckpt_path")
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        raise Interrupted(143, _stopped_message("SIGTERM", out_dir, trainer)) from None
    except SystemExit as exit_:  # Lightning turns Ctrl-C into sys.exit(1) after the callbacks ran
        if getattr(trainer, "dpm_stopped_by_signal", False) or trainer.state.status.value == "interrupted":
            raise Interrupted(130, _stopped_message("SIGINT", out_dir, trainer)) from None
        raise exit_
    except NonFiniteStop as err:
        raise RunFailed(f"{err} {_last_checkpoint_note(out_dir)}") from None
    if trainer.global_step <= start_step:
        raise RunFailed(f"the run ended after {trainer.global_step - start_step} optimizer steps: trainer.max_steps="
                        f"{cfg.trainer.max_steps} was already reached{' by the checkpoint' if ckpt_path else ''} "
                        "or the training split gave no batch. Raise trainer.max_steps.")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    paths = {"run_dir": str(out_dir), "checkpoint": str(out_dir / "checkpoints" / "last.ckpt")}
    if cfg.get("test_at_end", True) and trainer.is_global_zero:
        result = test_at_end(cfg, module, dm, out_dir)
        metrics.update({"test/K": result["K"], "test/K_stderr": result["K_stderr"]})
        for logger in trainer.loggers:
            logger.log_metrics({"test/K": result["K"], "test/K_minus_L_null": result["K_minus_L_null"]},
                               step=trainer.global_step)
            logger.save()
        paths["eval"] = str(out_dir / "eval.json")
    return {**metrics, **paths}


def test_at_end(cfg: DictConfig, module: DiffusionModule, dm: DataModule, out_dir: Path) -> dict:
    """The final weights on the test split (exact, or mc with test_n_t draws where T > test_exact_max_T),
    written to <run>/eval.json through the same code as evaluate.py."""
    T = module.diffusion.T
    estimator = "exact" if T <= cfg.get("test_exact_max_T", 200) else "mc"
    device = module.device
    module.eval()
    result = bound_over_split(module, dm, split="test", estimator=estimator, n_t=min(cfg.get("test_n_t", 64), T - 1),
                              batch_size=dm.eval_batch_size, seed=cfg.get("seed") or 0, device=device,
                              progress=cfg.get("progress", True))
    result.update(weights=_weights_kind(module), checkpoint=str(out_dir / "checkpoints" / "last.ckpt"))
    write_json(out_dir / "eval.json", result)
    print(format_table(result))
    return result


def _weights_kind(module: DiffusionModule) -> str:
    trainer = module._trainer
    uses_ema = trainer is not None and any(type(cb).__name__ == "EMAWeightAveraging" for cb in trainer.callbacks)
    return "ema" if uses_ema else "raw"


def _last_checkpoint_note(out_dir: Path) -> str:
    last = out_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        step = torch.load(last, map_location="cpu", weights_only=True).get("global_step")
        return f"{last} holds the weights of step {step}."
    return "No checkpoint was written before the stop (no validation had run)."


def _stopped_message(signal_name: str, out_dir: Path, trainer: L.Trainer) -> str:
    last = out_dir / "checkpoints" / "last.ckpt"
    where = (f"{last} holds step {trainer.global_step}; resume with: python train.py ckpt_path={last}"
             if last.is_file() else "no checkpoint could be written")
    return f"stopped by {signal_name} at step {trainer.global_step}: {where}"


def check_eval_config(cfg: DictConfig) -> None:
    """evaluate.py's own settings, before the checkpoint is read."""
    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task!r} is unknown; valid choices: {list(TASKS)}")
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
    ckpt = load_checkpoint(None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path)
    dm, module, weights = restore(ckpt, cfg.weights)
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
