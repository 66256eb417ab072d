"""The checkpoint callback every run has: last.ckpt kept current (the figures' callbacks are in dpm.figures.callbacks)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dpm.errors import is_out_of_memory
from dpm.io.progress import StopRequested, clear_stop, request_stop


class LastCheckpoint(L.Callback):
    """Keeps <dirpath>/last.ckpt current: after every validation (ModelCheckpoint's save_last writes it only when
    a new best is saved), at the end of training, and on Ctrl-C or SIGTERM, so a run can always be resumed with
    ckpt_path=.../last.ckpt. Any other exception writes <dirpath>/crash.ckpt instead, leaving the last good
    last.ckpt in place; none when the disk failed or memory ran out. SIGTERM also asks every long loop outside the
    training steps (figures, the test bound: dpm.io.progress) to stop at its next progress update."""

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
            clear_stop()  # a stop asked of an earlier run in this process is not this run's
            connector = trainer._signal_connector

            def on_sigterm(signum, frame) -> None:
                connector.received_sigterm = True
                request_stop("SIGTERM")  # and a long loop outside the steps (a figure, the test bound) stops too

            signal.signal(signal.SIGTERM, on_sigterm)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._saved_step != trainer.global_step:  # not again: a later save would resume one epoch late
            self._save(trainer)

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException, StopRequested))
        trainer.dpm_stopped_by_signal = interrupted  # read by dpm.app.train to choose the exit code
        if isinstance(exception, OSError):
            return  # the disk or folder failed: another write would hide the original error behind a second one
        if is_out_of_memory(exception):
            return  # the weights are last.ckpt's plus some steps; a checkpoint written now may not fit either
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
