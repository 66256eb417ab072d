"""evaluate(cfg, out_dir): restore a model from its checkpoint and run one evaluate task (dpm.tasks) in out_dir."""

from __future__ import annotations

import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from dpm.app.build import restore
from dpm.app.checkpoint import WEIGHTS, load_checkpoint
from dpm.app.checks import EVAL_RULES, check_ranges
from dpm.app.reported import CKPT_CHOICES, best_of_run
from dpm.app.resume import location_keys
from dpm.app.rundir import claimed_for, global_rank_from_env, write_hydra_record
from dpm.app.trainer import check_slurm_layout, processes_cleaned_up
from dpm.app.trust import TASK_SIGNATURE, trusted_packages, trusted_task
from dpm.data.base import SPLITS
from dpm.errors import ConfigError, RunFailed, is_out_of_memory
from dpm.tasks import TASKS, Task
from dpm.tasks.provenance import changed_data_note, checkpoint_record


def check_eval_config(cfg: DictConfig) -> None:
    """The settings evaluate.py's tasks share, before the checkpoint is read (each task checks its own, dpm.tasks;
    task=own checks that its module is trusted and meets the task contract)."""
    if cfg.get("task") != OWN and cfg.get("task") not in TASKS:
        raise ConfigError(f"task={cfg.get('task')!r} is unknown; valid choices: {[*TASKS, OWN]}")
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r} is unknown; valid choices: {list(SPLITS)}")
    if cfg.weights not in WEIGHTS:
        raise ConfigError(f"weights={cfg.weights!r} is unknown; valid choices: {list(WEIGHTS)}")
    if cfg.get("ckpt_choice", "run") not in CKPT_CHOICES:
        raise ConfigError(f"ckpt_choice={cfg.ckpt_choice!r} is unknown; valid choices: {list(CKPT_CHOICES)} (run: the "
                          "weights the run reports, its best validation checkpoint with test_weights=best; given: "
                          "the file ckpt_path names)")
    check_ranges(cfg, EVAL_RULES)
    if cfg.get("dataset") is not None:
        raise ConfigError("evaluate.py takes the data set and its settings from the checkpoint; dataset.* cannot be "
                          f"set here. Data that moved: {'=, '.join(LOCATIONS)}= (the data set's own location key)")


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


LOCATIONS = ("data_dir", "path", "folder", "file")  # where a data set's files are (its location_keys)
FETCHES = ("download", "cache")  # whether evaluate may fetch missing files or write a generated set's cache


def data_choices(run_config: dict, cfg: DictConfig) -> str:
    """Set the checkpoint's dataset node's location keys (data_dir, path, folder, file: those its data set names in
    location_keys), download and cache (in place) from the command line: the checkpoint's locations are only
    defaults (evaluate.py path=FILE replaces dataset.path, the data having moved), and it never downloads or writes
    a cache unless the command line asks (download=true, cache=true), whatever the checkpoint says. A key the data
    set does not take is refused. Returns the line that says what is read."""
    dataset = run_config.get("dataset", {})
    name = str(dataset.get("_target_", "?")).rsplit(".", 1)[-1]
    where = [key for key in (k.removeprefix("dataset.") for k in location_keys(run_config))
             if key in LOCATIONS and key in dataset]
    given = {key: cfg.get(key) for key in LOCATIONS if cfg.get(key) is not None}
    for key, value in given.items():
        if key not in where:
            reads = (f"its files are set by {', '.join(f'{k}=' for k in where)}" if where
                     else "it is generated or ships with a package, so no file is read")
            raise ConfigError(f"{key}={value} does not apply to this checkpoint's data ({name}): {reads}")
    for key in FETCHES:
        if cfg.get(key) and key not in dataset:
            raise ConfigError(f"{key}=true does not apply to this checkpoint's data ({name}): nothing is downloaded "
                              "or cached for it")
    parts = []
    for key in where:
        if key in given:
            dataset[key] = str(given[key])
        value = dataset[key] if dataset[key] is not None else "null (the copy that ships with its package)"
        parts.append(f"{key}={value} ({'given' if key in given else f'the checkpoint’s; {key}=... to change'})")
    for key in FETCHES:
        if key in dataset:
            checkpoint_value, dataset[key] = dataset[key], bool(cfg.get(key, False))
            parts.append(f"{key}={str(dataset[key]).lower()}" + (
                f" (the checkpoint had {str(checkpoint_value).lower()}; {key}=true to allow)"
                if bool(checkpoint_value) and not dataset[key] else ""))
    if not where:
        return f"data: {name}, generated or shipped with a package (no file of yours is read; nothing is written)"
    return f"data: {name} read from {', '.join(parts)}"


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
    ckpt, ckpt_path, chosen = choose_checkpoint(cfg, ckpt, trusted)
    print(data_choices(ckpt["dpm_config"], cfg), flush=True)
    dm, module, weights = restore(ckpt, cfg.weights, trusted)
    module.origin = checkpoint_record(ckpt_path, ckpt.get("global_step"), weights)
    note = changed_data_note(dm)
    if note:
        print(note, flush=True)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.weights = weights  # the weights loaded (auto resolved), as the results record them
        cfg.ckpt_path, cfg.weights_chosen = str(ckpt_path), chosen
    try:
        settings = task.check(cfg, dm, module.diffusion)
    except ValueError as err:  # a task's check refuses a setting (every check runs before anything is written)
        raise ConfigError(str(err)) from None
    rank0 = global_rank_from_env() == 0  # processes Fabric starts later write nothing of their own
    with claimed_for(out_dir, "evaluation", rank0):
        if rank0 and hydra_record:
            write_hydra_record(out_dir, hydra_record)
        if fabric is None:
            with memory_named(cfg, settings):
                return task.run(module.to(device).eval(), dm, cfg, out_dir, device, settings)
        with processes_cleaned_up():
            fabric.launch()
            try:
                with memory_named(cfg, settings):
                    return task.run(module.to(fabric.device).eval(), dm, cfg, out_dir, fabric.device, settings,
                                    fabric=fabric)
            except BaseException:  # SIGTERM, Ctrl-C or an error on rank 0: the processes it started stop too
                stop_launched(fabric)
                raise


def choose_checkpoint(cfg: DictConfig, ckpt: dict, trusted: tuple[str, ...]) -> tuple[dict, Path, dict]:
    """(the checkpoint to evaluate, its path, eval.json's fields that say which weights these are): with
    ckpt_choice=run the weights the run reports (dpm.app.reported.best_of_run: its best validation checkpoint when
    it was trained with test_weights=best), with ckpt_choice=given the file itself. Says which on one line."""
    given = Path(cfg.ckpt_path)
    path, chosen = (best_of_run(ckpt, given) if cfg.get("ckpt_choice", "run") == "run"
                    else (given, {"weights_chosen": "given", "weights_step": int(ckpt.get("global_step", 0))}))
    if path != given:
        ckpt = load_checkpoint(path, trusted=trusted)
        chosen["weights_step"] = int(ckpt.get("global_step", 0))
        print(f"weights: the run's best validation checkpoint, step {chosen['weights_step']} (val/K "
              f"{chosen['weights_val_K']:.3f}): {path} (ckpt_choice=given evaluates {given.name} itself)", flush=True)
    else:
        print(f"weights: {path}, step {chosen['weights_step']} ({chosen['weights_chosen']})", flush=True)
    return ckpt, path, chosen


@contextmanager
def memory_named(cfg: DictConfig, settings: dict) -> Iterator[None]:
    """Memory that runs out inside a task becomes one message (exit 1) naming the task and the settings that size
    its memory, instead of a traceback."""
    try:
        yield
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        sizes = [f"batch_size={cfg.batch_size}"] + [f"{cfg.task}.{k}={v}" for k, v in settings.items()
                                                    if k in ("particles", "n", "n_samples")]
        raise RunFailed(f"task={cfg.task} ran out of memory ({type(err).__name__}: {first}); lower what sizes it: "
                        f"{', '.join(sizes)}") from None


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
        try:
            result = run(module, dm, cfg, out_dir, device)
        except ConfigError as err:  # the task refused one of its own settings: exit 2, named
            raise ConfigError(f"own.module={name!r}: {err}") from None
        except Exception as err:  # a failure inside the user's code: its traceback, then one line naming it
            traceback.print_exc()
            raise RunFailed(f"own.module={name!r} failed: {type(err).__name__}: {err} (its traceback is above)") from None
        if not isinstance(result, dict):
            raise ConfigError(f"own.module={name!r} breaks the task contract: {TASK_SIGNATURE}, but its run "
                              f"returned a {type(result).__name__}")
        return result

    return Task(check=lambda cfg, dm, diffusion: {}, run=run_checked)
