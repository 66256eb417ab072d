"""The plain side of every comparison: the same network and loss in a minimal PyTorch loop."""

from __future__ import annotations

from typing import Callable

import torch

from dpm.bench.presets import autocast
from dpm.bench.regions import BACKWARD, LOSS, region
from dpm.core.bound import LN2, K_per_example


class Plain:
    """The minimal loop: network, optimizer and data on the device; loss = -(K - L_null) in the module's units."""

    def __init__(self, net: torch.nn.Module, diffusion: torch.nn.Module, optimizer: Callable, dm,
                 units_per_example: int, device: torch.device, precision: str, batch: int, n_t: int,
                 compile: bool = False) -> None:
        self.net, self.diffusion = net, diffusion
        self.loss = torch.compile(self._loss) if compile else self._loss  # compile: the whole loss, as the module
        self.optimizer = optimizer([*net.parameters(), *diffusion.parameters()])
        self.dm, self.device, self.precision, self.batch, self.n_t = dm, device, precision, batch, n_t
        self.scale = 1.0 / (LN2 * units_per_example)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
        self.train_data = dm.splits["train"].to(device)
        self.val_data = dm.splits["val"].to(device)

    def batch_of(self, data: torch.Tensor, n: int) -> torch.Tensor:
        return data[torch.randint(len(data), (n,), device=self.device)]

    def _loss(self, x0: torch.Tensor) -> torch.Tensor:
        x0 = self.dm.dequantize(x0)
        K = K_per_example(self.diffusion, self.net, x0, "mc", 1)
        return -(K - self.diffusion.L_null(x0)).mean() * self.scale

    def train_step(self, regions: bool = False) -> None:
        """One step; regions=True marks its loss and backward for dpm.bench.profile."""
        x0 = self.batch_of(self.train_data, self.batch)
        with region(LOSS, regions), autocast(self.device, self.precision):
            loss = self.loss(x0)
        self.optimizer.zero_grad(set_to_none=True)
        with region(BACKWARD, regions):
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()

    @torch.inference_mode()
    def forward_step(self, batch: int) -> None:
        x0 = self.dm.dequantize(self.batch_of(self.val_data, batch))
        with autocast(self.device, self.precision):
            (K_per_example(self.diffusion, self.net, x0, "mc", self.n_t) - self.diffusion.L_null(x0)).mean()


