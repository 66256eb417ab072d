"""Callbacks: the data set's figure (dpm.figures) in the run directory and the logger; last.ckpt kept current."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dpm.figures import draw


class SampleFigure(L.Callback):
    """Writes <dirpath>/<name>_step<k>.png every `every_n_val` validations (0: only at the end of training),
    and <dirpath>/<name>.png when training ends; a W&B logger also receives the image."""

    def __init__(self, dirpath: str, name: str = "samples", every_n_val: int = 0, seed: int = 0) -> None:
        self.dirpath, self.name, self.every_n_val, self.seed = Path(dirpath), name, every_n_val, seed
        self.n_val = 0

    @rank_zero_only
    def _draw(self, trainer: L.Trainer, module: L.LightningModule, filename: str) -> None:
        path = draw(module, trainer.datamodule, self.dirpath / filename, self.seed)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=f"figures/{self.name}", images=[str(path)], step=trainer.global_step)

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_val <= 0:
            return
        self.n_val += 1
        if self.n_val % self.every_n_val == 0:
            self._draw(trainer, module, f"{self.name}_step{trainer.global_step:07d}.png")

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._draw(trainer, module, f"{self.name}.png")


class LastCheckpoint(L.Callback):
    """Keeps <dirpath>/last.ckpt current: after every validation (ModelCheckpoint's save_last writes it only when
    a new best is saved), at the end of training, and on Ctrl-C or SIGTERM, so a run can always be resumed with
    ckpt_path=.../last.ckpt. Any other exception writes <dirpath>/crash.ckpt instead, leaving the last good
    last.ckpt in place."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self._saved_step = -1

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.dirpath / "last.ckpt", weights_only=False)
        self._saved_step = trainer.global_step

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Lightning 2.6's SIGTERM handler kills the other DDP ranks and then broadcasts to them from inside the
        # handler, which waits forever on the ranks it killed. Here SIGTERM only sets Lightning's flag; its
        # per-step broadcast of that flag then stops every rank at the same step, and on_exception saves.
        # (Registered at train start: Lightning installs its handlers after on_fit_start.)
        if threading.current_thread() is threading.main_thread():
            connector = trainer._signal_connector

            def on_sigterm(signum, frame) -> None:
                connector.received_sigterm = True

            signal.signal(signal.SIGTERM, on_sigterm)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._saved_step != trainer.global_step:  # not again: a later save would resume one epoch late
            self._save(trainer)

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        trainer.dpm_stopped_by_signal = interrupted  # read by dpm.app.train to choose the exit code
        if isinstance(exception, OSError):
            return  # the disk or folder failed: another write would hide the original error behind a second one
        try:
            self._save_without_barrier(trainer, self.dirpath / ("last.ckpt" if interrupted else "crash.ckpt"))
        except Exception as err:  # keep the original error the one the user sees
            rank_zero_warn(f"could not write a checkpoint after {type(exception).__name__}: {err}")

    @staticmethod
    def _save_without_barrier(trainer: L.Trainer, path: Path) -> None:
        """Rank 0 writes the checkpoint alone. trainer.save_checkpoint ends at a barrier, and after a signal or an
        error the other DDP ranks may never reach it (Lightning's launcher has already killed them on SIGTERM)."""
        if trainer.is_global_zero:
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, path)


class ScheduleFigure(L.Callback):
    """Writes <dirpath>/<name>.png when training ends: beta_t and alpha_bar_t on log axes (dpm.figures.schedule),
    for a learned schedule (paper 2.4.1) the schedule at the start of this fit beside the one at its end; loggers
    with log_image (W&B) receive it too."""

    def __init__(self, dirpath: str, name: str = "schedule") -> None:
        self.dirpath, self.name = Path(dirpath), name
        self.start: tuple[int, object] | None = None  # (global step, beta [T]) when this fit started

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.start = (trainer.global_step, module.diffusion.beta().detach().double().cpu())

    def curves(self, module: L.LightningModule, step: int) -> dict:
        """label -> beta float64 [T]: the learned schedule's start and its current value, or the fixed one."""
        beta = module.diffusion.beta().detach().double().cpu()
        learned = any(p.requires_grad for p in module.diffusion.schedule.parameters())
        if learned and self.start is not None:
            return {f"start (step {self.start[0]})": self.start[1], f"end (step {step})": beta}
        return {"fixed": beta}

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        from dpm.figures.schedule import schedule  # here, so that this class is a self-contained addition

        diffusion, betas = module.diffusion, self.curves(module, trainer.global_step)
        kind = getattr(diffusion.schedule, "kind", "")
        title = (f"{diffusion.kind} diffusion, {'learned ' if 'fixed' not in betas else ''}{kind} schedule, "
                 f"T = {diffusion.T}")
        path = schedule(betas, self.dirpath / f"{self.name}.png", title)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=f"figures/{self.name}", images=[str(path)], step=trainer.global_step)
