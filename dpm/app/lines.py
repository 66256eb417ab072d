"""Training progress: on a terminal one bar over the whole run (step k of max_steps, StepBar), in a log file (SLURM,
CI, `python train.py > log 2>&1`) one line every `every_s` seconds and one per validation (LineProgress), both
through Lightning's own progress-bar hooks; and the library messages a user cannot act on are filtered where they
are raised."""

from __future__ import annotations

import logging
import sys
import time
import warnings

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from tqdm import tqdm

from dpm.io.progress import format_duration

# (category, message regex) of library warnings that say nothing a dpm user can act on
QUIET_WARNINGS = (
    (FutureWarning, r".*isinstance\(treespec, LeafSpec\).*"),  # Lightning's own use of a deprecated torch API
    (UserWarning, r"The number of training batches .* is smaller than the logging interval"),  # dpm logs by step
)
ADVERTS = ("💡 Tip:",)  # Lightning's rank-zero advertisements for its cloud products


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(ADVERTS)


def quiet_library_noise() -> None:
    """Filter QUIET_WARNINGS and Lightning's advertisements (idempotent)."""
    for category, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _NoAdverts) for f in log.filters):
            log.addFilter(_NoAdverts())


class LineProgress(ProgressBar):
    """Lightning's progress bar as lines: `step 1200/4000 (30 %) | train/loss -1.23 | val/K 0.84 | 0:42 elapsed,
    1:38 left`, every `every_s` seconds of training and after each validation, on rank 0, to stderr."""

    def __init__(self, every_s: float = 15.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._enabled = True
        self._start = self._last = 0.0
        self._start_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, trainer: L.Trainer, text: str) -> None:
        if self._enabled and trainer.is_global_zero:
            print(text, file=sys.stderr, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._start_step = trainer.global_step
        self._print(trainer, f"training from step {trainer.global_step} to {trainer.max_steps} "
                             f"(a line every {self.every_s:g} s and after each validation)")

    def line(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        step, total = trainer.global_step, trainer.max_steps
        elapsed = time.monotonic() - self._start
        parts = [f"step {step}/{total} ({100 * step / total:.0f} %)" if total and total > 0 else f"step {step}"]
        metrics = self.get_metrics(trainer, pl_module)
        for key in ("train/loss", "val/K"):
            value = metrics.get(key, trainer.callback_metrics.get(key))
            if value is not None:
                parts.append(f"{key} {float(value):.4g}")
        done = step - self._start_step
        left = (total - step) * elapsed / done if done > 0 and total and total > 0 else None
        parts.append(f"{format_duration(elapsed)} elapsed" + (f", {format_duration(left)} left" if left else ""))
        return " | ".join(parts)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._print(trainer, self.line(trainer, pl_module))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._last = time.monotonic()
            self._print(trainer, self.line(trainer, pl_module) + " (validation)")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(trainer, self.line(trainer, pl_module) + " (end of training)")


class StepBar(TQDMProgressBar):
    """Lightning's terminal bar over the whole run: `training: step k of max_steps`, not the batches of each epoch
    (an epoch of a small data set is a few steps), redrawn every `refresh_rate` steps; validation's bar shows below
    it while it runs. Warnings raised meanwhile are written above the bar instead of into it."""

    def __init__(self, refresh_rate: int = 10) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._showwarning = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None)
        bar.initial = bar.n = trainer.global_step  # a resumed run starts where it stopped
        bar.set_description("training (steps)")
        self._showwarning = warnings.showwarning
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: tqdm.write(
            warnings.formatwarning(message, category, filename, lineno, line).rstrip(), file=sys.stderr)

    def on_train_epoch_start(self, trainer: L.Trainer, *_) -> None:
        pass  # one bar for the whole run: nothing to reset at an epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar, step = self.train_progress_bar, trainer.global_step
        if bar is not None and not bar.disable and self._should_update(step, bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # the bar spans the epochs (its postfix is set at each redraw)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bar = self.train_progress_bar
        if bar is not None and not bar.disable:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        super().on_train_end(trainer, pl_module)
        self._restore_warnings()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_warnings()

    def _restore_warnings(self) -> None:
        if self._showwarning is not None:
            warnings.showwarning, self._showwarning = self._showwarning, None
