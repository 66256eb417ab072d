"""Training progress as plain lines, for a log file (SLURM, CI, `python train.py > log 2>&1`): a terminal gets
Lightning's redrawn bar, a file gets one line every `every_s` seconds and one per validation, through Lightning's
own progress-bar hooks; and the library messages a user cannot act on are filtered where they are raised."""

from __future__ import annotations

import logging
import sys
import time
import warnings

import lightning as L
from lightning.pytorch.callbacks import ProgressBar

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
