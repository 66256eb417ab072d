"""train(cfg, out_dir): fit the model a config describes into its run directory, then test it (eval.json).

No Hydra runtime is needed here (train.py passes the run directory), so tests call it directly. Every check that
can fail runs before the first file is written; a run directory holds one run (dpm.app.rundir); a resumed run
applies or refuses each changed setting (dpm.app.resume); a SLURM job that SLURM started again after a requeue
resumes from its own last.ckpt in its own directory (dpm.app.requeue).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from dpm.app.build import build
from dpm.app.checkpoint import load_checkpoint
from dpm.app.checks import check_train_config, resolved
from dpm.app.reported import load_reported_weights, validation_record
from dpm.app.requeue import RequeueOnSignal, keep_earlier_metrics
from dpm.app.resume import check_resume
from dpm.app.rundir import check_writable, claimed_for, global_rank_from_env, requeued_run, write_hydra_record
from dpm.app.slurm import restarts, slurm_job_id
from dpm.app.trainer import check_data_fits, make_trainer, processes_cleaned_up, trainer_settings
from dpm.app.trust import trusted_packages
from dpm.app.wandb_offline import offline_without_credentials
from dpm.data.base import DataModule
from dpm.errors import Interrupted, RunFailed, is_out_of_memory
from dpm.io.files import write_text
from dpm.io.progress import StopRequested
from dpm.model.module import DiffusionModule, NonFiniteStop
from dpm.tasks.bound import bound_over_split, write_bound
from dpm.tasks.provenance import checkpoint_record


def train(cfg: DictConfig, out_dir: str | Path, hydra_record: dict[str, str] | None = None) -> dict:
    """Fit the model of cfg into out_dir (checkpoints, logs, figures, config.yaml), then evaluate it on the test
    split (eval.json) unless test_at_end is false. Returns the final metrics and the paths written."""
    out_dir = Path(out_dir)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.out_dir = str(out_dir)
    cfg = resolved(cfg)  # what is checked is what the Trainer, callbacks and loggers are built from
    check_train_config(cfg)
    requeued = requeued_run(out_dir)  # this SLURM job's own directory, from its start before a requeue
    own = out_dir / "checkpoints" / "last.ckpt"
    if requeued and own.is_file():
        with open_dict(cfg):
            cfg.ckpt_path = str(own)
    note = offline_without_credentials(cfg)  # before anything is built or written: the config records it
    if note and global_rank_from_env() == 0:
        print(note, file=sys.stderr, flush=True)
    ckpt_path = cfg.get("ckpt_path")
    changes, start_step = [], 0
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path, trusted=trusted_packages(cfg))
        new = OmegaConf.to_container(cfg, resolve=True)
        changes = check_resume(ckpt["dpm_config"], new, str(ckpt_path))
        start_step = int(ckpt.get("global_step", 0))
        del ckpt
    if requeued and global_rank_from_env() == 0:
        print(f"SLURM job {slurm_job_id()} started again (restart {restarts()}): the run goes on in {out_dir} from "
              f"step {start_step} ({ckpt_path or 'no checkpoint was written before'})", file=sys.stderr, flush=True)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    settings = trainer_settings(cfg)
    # In a SLURM job, SLURM's warning signals are answered from here on (dpm.app.requeue)
    requeue = RequeueOnSignal() if slurm_job_id() and threading.current_thread() is threading.main_thread() else None
    try:
        dm, module = build(cfg)
        check_data_fits(cfg, dm)
        # The Trainer (strategy, accelerator, devices: what Lightning refuses) is built before the directory is
        # claimed, so that a refused setting leaves nothing there and the corrected command can use it.
        trainer = make_trainer(cfg, settings, (requeue,) if requeue is not None else ())
        rank0 = global_rank_from_env() == 0  # the DDP processes Lightning starts later share rank 0's directory
        with claimed_for(out_dir, "training run", rank0):
            if rank0:
                check_writable(out_dir / "checkpoints", "hydra.run.dir")
                if hydra_record:
                    write_hydra_record(out_dir, hydra_record)
                config = dict(module.run_config)
                if ckpt_path is not None:
                    config["resumed_from"] = str(ckpt_path)
                    config["changed_on_resume"] = {k: new_v for k, _, new_v in changes}
                write_text(out_dir / "config.yaml", OmegaConf.to_yaml(config))
                if requeued:
                    keep_earlier_metrics(trainer)
            for logger in trainer.loggers:  # the resolved config beside the metrics (hparams.yaml, W&B config)
                logger.log_hyperparams(module.run_config)
            try:
                with processes_cleaned_up():
                    return _fit_and_test(cfg, trainer, module, dm, out_dir, start_step, requeue)
            finally:
                if any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers):
                    import wandb

                    wandb.finish()  # or every job of a multirun logs into one W&B run
    finally:
        if requeue is not None:
            requeue.restore()


def _fit_and_test(cfg: DictConfig, trainer: L.Trainer, module: DiffusionModule, dm: DataModule,
                  out_dir: Path, start_step: int, requeue: RequeueOnSignal | None = None) -> dict:
    ckpt_path = cfg.get("ckpt_path")
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except (SIGTERMException, StopRequested):  # between steps, or in a long loop (a figure) outside them
        if requeue is not None and requeue.signal is not None:  # SLURM: the time limit or a preemption is near
            raise requeue.interrupted(trainer, start_step, _checkpoint_note(out_dir, trainer)) from None
        raise Interrupted(143, _stopped_message("SIGTERM", out_dir, trainer)) from None
    except MemoryError as err:
        raise RunFailed(_out_of_memory(err, "training", cfg, out_dir, trainer)) from None
    except SystemExit as exit_:  # Lightning turns Ctrl-C into sys.exit(1) after the callbacks ran
        if getattr(trainer, "dpm_stopped_by_signal", False) or trainer.state.status.value == "interrupted":
            raise Interrupted(130, _stopped_message("SIGINT", out_dir, trainer)) from None
        raise exit_
    except NonFiniteStop as err:
        raise RunFailed(f"{err} {_last_checkpoint_note(out_dir)}") from None
    except RuntimeError as err:  # on another rank (DDP): rank 0 ended (a SIGTERM, an error) mid-collective
        if is_out_of_memory(err):
            raise RunFailed(_out_of_memory(err, "training", cfg, out_dir, trainer)) from None
        if trainer.is_global_zero or trainer.world_size == 1:
            raise
        why = f"rank 0 ended in the middle of a step ({str(err).strip().splitlines()[0][:160]})"
        if trainer.received_sigterm:
            raise Interrupted(143, f"rank {trainer.global_rank} stopped by SIGTERM at step {trainer.global_step}: "
                                   f"{why}; rank 0 reports the checkpoint") from None
        raise RunFailed(f"rank {trainer.global_rank} stopped at step {trainer.global_step}: {why}; rank 0's "
                        "message says why") from None
    if trainer.global_step <= start_step:
        raise RunFailed(f"the run ended after {trainer.global_step - start_step} optimizer steps: trainer.max_steps="
                        f"{cfg.trainer.max_steps} was already reached{' by the checkpoint' if ckpt_path else ''} "
                        "or the training split gave no batch. Raise trainer.max_steps.")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    paths = {"run_dir": str(out_dir), "checkpoint": str(out_dir / "checkpoints" / "last.ckpt")}
    if cfg.get("test_at_end", True) and trainer.is_global_zero:
        try:
            result = test_at_end(cfg, module, dm, out_dir)
        except StopRequested:
            last = out_dir / "checkpoints" / "last.ckpt"
            raise Interrupted(143, f"stopped by SIGTERM during the test bound after training; {last} holds the "
                                   f"final step {trainer.global_step}: python evaluate.py ckpt_path={last} gives "
                                   "the bound") from None
        except (RuntimeError, MemoryError) as err:
            if not is_out_of_memory(err):
                raise
            raise RunFailed(_out_of_memory(err, "the test bound after training", cfg, out_dir, trainer)) from None
        metrics.update({"test/K": result["K"], "test/K_stderr": result["K_stderr"]})
        paths["test/estimator"] = result["estimator"]  # exact, or mc above test_exact_max_T (the last lines say)
        for logger in trainer.loggers:
            logger.log_metrics({"test/K": result["K"], "test/K_minus_L_null": result["K_minus_L_null"]},
                               step=trainer.global_step)
            logger.save()
        paths["eval"] = str(out_dir / "eval.json")
    return {**metrics, **paths}


def test_at_end(cfg: DictConfig, module: DiffusionModule, dm: DataModule, out_dir: Path) -> dict:
    """The weights the run reports (test_weights: the best validation checkpoint, or the last weights; EMA's with
    callbacks=ema) on the test split (exact, or mc with test_n_t draws where T > test_exact_max_T), written to
    <run>/eval.json through the same code as evaluate.py, with the record of val/K (dpm.app.reported)."""
    T = module.diffusion.T
    estimator = "exact" if T <= cfg.get("test_exact_max_T", 200) else "mc"
    device = module.device
    weights = _weights_kind(module)
    chosen = load_reported_weights(cfg.get("test_weights", "last"), module.trainer, module,
                                   out_dir / "checkpoints" / "last.ckpt")
    module.eval()
    module.origin = checkpoint_record(chosen["checkpoint"], chosen["weights_step"], weights)
    result = bound_over_split(module, dm, split="test", estimator=estimator, n_t=min(cfg.get("test_n_t", 64), T - 1),
                              batch_size=dm.eval_batch_size, seed=cfg.get("seed") or 0, device=device,
                              progress=cfg.get("progress", True))
    result.update(weights=weights, **chosen, **validation_record(module.trainer))
    write_bound(result, out_dir)
    return result


def _weights_kind(module: DiffusionModule) -> str:
    trainer = module._trainer
    uses_ema = trainer is not None and any(type(cb).__name__ == "EMAWeightAveraging" for cb in trainer.callbacks)
    return "ema" if uses_ema else "raw"


def _out_of_memory(err: BaseException, during: str, cfg: DictConfig, out_dir: Path, trainer: L.Trainer) -> str:
    """The one-paragraph message for memory that ran out: where, what asked for it, what to lower."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    lower = ("a smaller dataset.eval_batch_size (the examples per batch of the bound)" if "bound" in during else
             "a smaller dataset.batch_size or a smaller network (net.*)")
    return (f"out of memory in {during} at step {trainer.global_step} ({type(err).__name__}: {first}). Try {lower}; "
            f"{_last_checkpoint_note(out_dir)}")


def _last_checkpoint_note(out_dir: Path) -> str:
    last = out_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        # memory-mapped: after memory ran out, the weights are not read in to learn the step
        step = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("global_step")
        return f"{last} holds the weights of step {step}."
    return "No checkpoint was written before the stop (no validation had run)."


def _checkpoint_note(out_dir: Path, trainer: L.Trainer) -> str:
    last = out_dir / "checkpoints" / "last.ckpt"
    return f"{last} holds step {trainer.global_step}" if last.is_file() else "no checkpoint could be written"


def _stopped_message(signal_name: str, out_dir: Path, trainer: L.Trainer) -> str:
    last = out_dir / "checkpoints" / "last.ckpt"
    where = _checkpoint_note(out_dir, trainer)
    if last.is_file():
        where += f"; resume with: python train.py ckpt_path={last}"
    if last.is_file() and slurm_job_id() is not None:
        where += f" (or, if SLURM requeues job {slurm_job_id()}, it resumes from there by itself)"
    return f"stopped by {signal_name} at step {trainer.global_step}: {where}"
