"""Lightning's own per-step cost: a one-parameter module under Trainer.fit against the same loss in a plain loop."""

from __future__ import annotations

import time

import lightning as L
import torch


class _OneParameter(L.LightningModule):
    """The smallest trainable module: what Lightning's loop costs per step when the model costs nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(3))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return (self.p * batch).sum()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), fused=True)


class _StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start = warmup, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        self.seconds = (time.perf_counter() - self.start) / (trainer.global_step - self.warmup)


def lightning_floor(device: torch.device, steps: int, warmup: int = 50) -> dict:
    """Lightning's own per-step cost on `device`: a one-parameter module under Trainer.fit (no logger, progress
    bar, checkpointing or model summary) against the same loss and fused Adam in a plain loop. Seconds per step."""
    timer = _StepTimer(warmup)
    trainer = L.Trainer(accelerator=device.type, devices=[device.index] if device.type == "cuda" else 1,
                        max_steps=warmup + steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer])
    data = torch.ones(warmup + steps, 3)
    trainer.fit(_OneParameter(), torch.utils.data.DataLoader(data, batch_size=1))
    module = _OneParameter().to(device)
    optimizer, x = module.configure_optimizers(), torch.ones(3, device=device)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = (module.p * x).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"lightning_s_per_step": timer.seconds, "plain_s_per_step": (time.perf_counter() - start) / steps,
            "steps": steps}


