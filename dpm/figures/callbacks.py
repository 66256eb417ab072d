"""Lightning callbacks that draw a trained model's figures into the run directory and send them to the loggers:
the data set's figure (dpm.figures.draw) and the noise schedule (dpm.figures.schedule)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from dpm.figures import draw
from dpm.figures.schedule import schedule


class SampleFigure(L.Callback):
    """Writes <dirpath>/<name>_step<k>.png every `every_n_val` validations (0: only at the end of training),
    and <dirpath>/<name>.png when training ends; a W&B logger also receives the image. progress: its sampling's
    progress (dpm.io.progress: shown only when it lasts more than a few seconds, and stopped by SIGTERM)."""

    def __init__(self, dirpath: str, name: str = "samples", every_n_val: int = 0, seed: int = 0,
                 progress: bool = True) -> None:
        self.dirpath, self.name, self.every_n_val, self.seed = Path(dirpath), name, every_n_val, seed
        self.progress = progress
        self.n_val = 0

    @rank_zero_only
    def _draw(self, trainer: L.Trainer, module: L.LightningModule, filename: str) -> None:
        path = draw(module, trainer.datamodule, self.dirpath / filename, self.seed, progress=self.progress)
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
        diffusion, betas = module.diffusion, self.curves(module, trainer.global_step)
        kind = getattr(diffusion.schedule, "kind", "")
        title = (f"{diffusion.title}, {'learned ' if 'fixed' not in betas else ''}{kind} schedule, "
                 f"T = {diffusion.T}")
        path = schedule(betas, self.dirpath / f"{self.name}.png", title)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=f"figures/{self.name}", images=[str(path)], step=trainer.global_step)
