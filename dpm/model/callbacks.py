"""The callbacks every run has: last.ckpt kept current, and val/K watched for overfitting (the figures' callbacks are
in dpm.figures.callbacks)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dpm.errors import is_out_of_memory
from dpm.io.progress import StopRequested, clear_stop, request_stop
from dpm.ranges import count

log = logging.getLogger(__name__)


class LastCheckpoint(L.Callback):
    """Keeps <dirpath>/last.ckpt current: after every validation (ModelCheckpoint's save_last writes it only when
    a new best is saved), at the end of training, and on Ctrl-C or SIGTERM, so a run can always be resumed with
    ckpt_path=.../last.ckpt. Any other exception writes <dirpath>/crash.ckpt instead, leaving the last good
    last.ckpt in place; none when the disk failed or memory ran out. SIGTERM also asks every long loop outside the
    training steps (figures, the test bound: dpm.io.progress) to stop at its next progress update."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self._saved_step = -1
        self._stop_at_next_epoch = False

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

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # A stop asked for (SIGTERM, SLURM's warning signals) during an epoch's last batch or its validation:
        # Lightning would stop after counting the epoch as complete, a state that resumes one epoch's order off
        # (the next epoch's batches counted as done), and under DDP on rank 0 alone (only its flag is set). The stop
        # is carried over to the next epoch's start instead, where every rank stops together (Lightning's broadcast of
        # the flag before each step) in a state that resumes exactly.
        if trainer.received_sigterm and trainer.global_step < trainer.max_steps:
            trainer._signal_connector.received_sigterm = False
            self._stop_at_next_epoch = True

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._stop_at_next_epoch:
            self._stop_at_next_epoch = False
            trainer._signal_connector.received_sigterm = True

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


class OverfittingMonitor(L.Callback):
    """Watches val/K across validations and says so, in the log and in the run's eval.json, when after its best it
    falls at `patience` validations in a row: the model is fitting its training split better and held-out data
    worse, i.e. overfitting (until a new best, if one comes). Its record (every validation's step and K) is kept in checkpoints, so a resumed
    run continues the count.

    summary() -> {val_K_best, val_K_best_step, val_K_last, val_K_last_step, val_K_falls, overfitting} for the
    test bound at the end (dpm.app.train)."""

    def __init__(self, patience: int = 3, monitor: str = "val/K") -> None:
        self.patience = count("callbacks.overfitting.patience", patience, 1, why=" (validations in a row)")
        self.monitor = monitor
        self.history: list[tuple[int, float]] = []  # (global step, val/K) of every validation
        self.warned_at: int | None = None  # the step of the best whose fall was last reported

    def falls(self) -> int:
        """The longest run of validations, after the best one, each lower than the one before."""
        if not self.history:
            return 0
        values = [k for _, k in self.history]
        best = values.index(max(values))
        longest = streak = 0
        for before, now in zip(values[best:], values[best + 1:]):
            streak = streak + 1 if now < before else 0
            longest = max(longest, streak)
        return longest

    def summary(self) -> dict | None:
        if not self.history:
            return None
        best_step, best = max(self.history, key=lambda sk: sk[1])
        last_step, last = self.history[-1]
        falls = self.falls()
        return {"val_K_best": best, "val_K_best_step": best_step, "val_K_last": last, "val_K_last_step": last_step,
                "val_K_falls": falls, "overfitting": falls >= self.patience}

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or trainer.state.fn != "fit" or value is None:
            return
        self.history.append((int(trainer.global_step), float(value)))
        s = self.summary()
        if s["overfitting"] and self.warned_at != s["val_K_best_step"] and trainer.is_global_zero:
            self.warned_at = s["val_K_best_step"]
            log.warning(overfitting_message(s))

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        s = self.summary()
        if s is not None and s["overfitting"] and trainer.is_global_zero:
            log.warning(f"at the end of training: {overfitting_message(s)}")

    def state_dict(self) -> dict:
        return {"history": [list(h) for h in self.history], "warned_at": self.warned_at}

    def load_state_dict(self, state: dict) -> None:
        self.history = [(int(s), float(k)) for s, k in state.get("history", [])]
        self.warned_at = state.get("warned_at")


def overfitting_message(s: dict) -> str:
    """The one sentence that reports overfitting, from OverfittingMonitor.summary()."""
    return (f"overfitting: after its best, {s['val_K_best']:.3f} at step {s['val_K_best_step']}, val/K fell at "
            f"{s['val_K_falls']} validations in a row (at step {s['val_K_last_step']}: {s['val_K_last']:.3f}): the "
            "model fits its training split better and held-out data worse. The test bound at the end uses the best "
            "validation weights (test_weights=best); callbacks=early_stop stops such a run, and a smaller "
            "trainer.max_steps or more data helps.")
