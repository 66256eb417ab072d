"""The one LightningModule: owns the network and the diffusion (Gaussian or binomial), trains on -(K - L_null)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from dpm.core.bound import LN2, K_per_example
from dpm.core.diffusion import Diffusion
from dpm.core.keyed import Keys, step_generator
from dpm.core.training import ImportanceT, n_draws, one_draw_terms
from dpm.model.optim import patch_optimizer_state


_PLAIN_VALUES = (str, int, float, bool, type(None))


T_SAMPLING = ("uniform", "importance")


class NonFiniteStop(RuntimeError):
    """max_nonfinite non-finite losses or gradients in a row."""


class DiffusionModule(L.LightningModule):
    """Training maximises the bound with the unbiased one-t-per-example estimator (T - 1) KL_t (Eq. 14).

    units_per_example: K is reported per example divided by this (H x W for bits/pixel, else 1).
    optimizer / lr_scheduler: partials taking the parameters / the optimizer (Hydra `_partial_` nodes).
    val_n_t: stratified draws of t per validation example (the `mc` estimator); val_seed: validation's draws are
    keyed by (val_seed, example index), the same at every validation, for any batch size or number of devices.
    Training draws t, noise and dequantisation in one tensor (dpm.core.training) from a generator seeded by
    (seed, rank, global step) (dpm.core.keyed.step_generator): a resumed run repeats an uninterrupted one's draws
    on every rank. dequantization_width: the data module's (its dequantize's noise width, 0 for none).
    max_nonfinite: this many non-finite losses or gradients in a row stop the run; each one is skipped.
    compile: torch.compile the whole per-example training loss (dequantisation, x_t, network, KL and constant
    terms: dpm.core.training.K_one_draw), not only the network; the network module itself is left as it is, so
    its state_dict keys stay those of a plain one.
    t_sampling: how training draws each example's t: "uniform" (the paper's estimator) or "importance" (t ~ p_t
    proportional to the root mean square of KL_t, weighted by 1 / p_t: dpm.core.training.ImportanceT; its estimates
    travel in checkpoints under "dpm_t_sampler"). Both estimate K without bias.
    """

    def __init__(self, net: nn.Module, diffusion: Diffusion, optimizer: Callable[..., torch.optim.Optimizer],
                 lr_scheduler: Callable[..., Any] | None = None, units_per_example: int = 1, unit: str = "bits",
                 val_n_t: int = 4, val_seed: int = 12345, max_nonfinite: int = 20,
                 run_config: dict | None = None, seed: int = 0,
                 dequantize: Callable[..., torch.Tensor] | None = None, dequantization_width: float = 0.0,
                 compile: bool = False, t_sampling: str = "uniform") -> None:
        super().__init__()
        if t_sampling not in T_SAMPLING:
            raise ValueError(f"t_sampling={t_sampling!r} is unknown; valid choices: {list(T_SAMPLING)}")
        self.net, self.diffusion = net, diffusion
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.units_per_example, self.unit = units_per_example, unit
        self.val_n_t, self.val_seed = min(val_n_t, diffusion.T - 1), val_seed
        self.max_nonfinite = max_nonfinite
        self.run_config = run_config or {}  # the resolved config, saved in every checkpoint
        self.origin: dict = {}  # where the weights came from (dpm.tasks.provenance.checkpoint_record), set by who loads them
        self.val_K, self.val_K_minus_L_null = MeanMetric(), MeanMetric()
        self.nonfinite_in_a_row, self.nonfinite_total = 0, 0
        self.seed = seed
        self.dequantize = dequantize or (lambda x0, keys=None, generator=None: x0)  # the data module's (images)
        self.dequantization_width = float(dequantization_width)
        self.to_units_factor = 1.0 / (LN2 * units_per_example)
        self.compile_loss = bool(compile)
        self._compiled_loss: Callable | None = None  # made at the first step (a module copied before stays plain)
        self._generator: torch.Generator | None = None
        self._nonfinite: list[torch.Tensor] | None = None  # skipped-step counts on the device (fused optimizers)
        self._trained: list[nn.Parameter] | None = None  # the parameters with gradients, listed once
        self.t_sampler = ImportanceT(diffusion.T) if t_sampling == "importance" else None

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning records the hook it is in (_current_fx_name) around every hook call, about 45 times per training
        # step, and nn.Module.__setattr__ spends microseconds on each looking for a parameter, buffer or module of
        # that name. A name already in __dict__ is none of those (they live in _parameters, _buffers, _modules),
        # so a plain value there is set directly: the same result, without the search.
        if type(value) in _PLAIN_VALUES and name in self.__dict__:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(xt, t)

    def to_units(self, nats: torch.Tensor) -> torch.Tensor:
        """Per-example nats [N] -> the reporting unit (bits, bits/seq or bits/pixel)."""
        return nats / (LN2 * self.units_per_example)

    def bound(self, x0: torch.Tensor, estimator: str, n_t: int = 1, on_terms: Callable[[int], None] | None = None,
              keys: Keys | None = None, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, L_null) per example in the reporting unit, [N] each, its draws from keys (per example) or
        generator; on_terms reports progress (dpm.core.bound.kl_sum)."""
        K = K_per_example(self.diffusion, self.net, x0, estimator, n_t, generator=generator, on_terms=on_terms,
                          keys=keys)
        return self.to_units(K), self.to_units(self.diffusion.L_null(x0))

    def _train_loss(self, x0: torch.Tensor, z: torch.Tensor, t_probs: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, ...]:
        """The training loss -(K - L_null) averaged over the batch in the reporting unit, K [N] (nats), and each
        example's t [N] and KL_t [N] (for the importance sampler): dpm.core.training, t ~ t_probs where given."""
        const, kl, t, w, L_null = one_draw_terms(self.diffusion, self.net, x0, z, self.dequantization_width, t_probs)
        K = const - w * kl
        return (K - L_null).mean() * -self.to_units_factor, K, t, kl

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x0, _ = batch
        self._generator = step_generator(self.seed, self.global_rank, self.global_step, x0.device, self._generator)
        # every draw of the step at once: t, dequantisation, forward noise (dpm.core.training)
        z = torch.randn(len(x0), n_draws(x0, self.dequantization_width), generator=self._generator,
                        device=x0.device, dtype=torch.float64 if x0.dtype == torch.float64 else torch.float32)
        if self.compile_loss and self._compiled_loss is None:
            self._compiled_loss = torch.compile(self._train_loss)
        t_probs = self.t_sampler.probs() if self.t_sampler is not None else None
        with self.diffusion.one_pass():  # the tables read once, outside a compiled loss
            loss, K, t, kl = (self._compiled_loss or self._train_loss)(x0, z, t_probs)
        if self.t_sampler is not None:  # every process folds in every process's draws: the same p everywhere
            world = self.trainer.world_size if self._trainer is not None else 1
            self.t_sampler.update(t, kl, None if world == 1 else
                                  lambda x: self.trainer.strategy.reduce(x, reduce_op="sum"))
        # Even a non-finite loss goes through backward: under DDP every rank must reach the gradient all-reduce,
        # and the all-reduced non-finite gradients then make every rank skip this step together (below).
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:  # self.log costs more than a small step
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/K", self.to_units(K).mean())
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the step when any gradient is non-finite. The gradients are already all-reduced here, so under
        DDP every rank sees the same ones and decides alike (no rank waits on another).

        A fused optimizer (Adam(fused=True), the default config) skips on the device, as it does for
        GradScaler: `found_inf` holds the decision (one fused check over all gradients, GradScaler's own) and
        nothing waits for the device; the count of skipped steps is read every log_every_n_steps (at most
        max_nonfinite // 2) steps. Other optimizers need the decision on the host: one sync per step."""
        if self._trained is None:  # the same parameters all through a fit: walking the modules per step is slow
            self._trained = [p for p in self.parameters() if p.requires_grad]
        grads = [p.grad for p in self._trained if p.grad is not None]
        if not grads:
            return
        if getattr(optimizer, "defaults", {}).get("fused"):
            if self._nonfinite is None:  # found_inf, steps skipped in a row, in all, 1: float [] on the device
                self._nonfinite = [torch.zeros((), device=grads[0].device) for _ in range(3)] + [
                    torch.ones((), device=grads[0].device)]
            found_inf, in_a_row, total, one = self._nonfinite
            found_inf.zero_()
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, one)  # scale 1: only the check
            optimizer.found_inf = found_inf
            in_a_row.add_(1).mul_(found_inf)
            total.add_(found_inf)
            # read at every logging step, and often enough that a stop comes at most max_nonfinite // 2 steps late
            step = self.global_step + 1
            log = step % self.trainer.log_every_n_steps == 0
            if log or step % max(1, self.max_nonfinite // 2) == 0:
                self._check_nonfinite(int(in_a_row), int(total), log)
        elif not torch.isfinite(torch.stack(torch._foreach_norm(grads))).all():
            optimizer.zero_grad(set_to_none=True)  # params without a grad are left alone by the optimizer
            self._check_nonfinite(self.nonfinite_in_a_row + 1, self.nonfinite_total + 1, log=True)
        else:
            self.nonfinite_in_a_row = 0

    def _check_nonfinite(self, in_a_row: int, total: int, log: bool) -> None:
        self.nonfinite_in_a_row, self.nonfinite_total = in_a_row, total
        if log:  # self.log costs more than a small model's step
            self.log("train/nonfinite_skipped", float(total))
        if in_a_row >= self.max_nonfinite:
            raise NonFiniteStop(f"{in_a_row} non-finite loss or gradient values in a row at step {self.global_step}; "
                                "stopping (each was skipped, so the weights are finite). Try a lower optimizer.lr or "
                                "trainer.precision=32-true.")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x0, index = batch
        keys = Keys(self.val_seed, index)  # each example's t, noise and dequantisation: the same every validation
        K, L_null = self.bound(self.dequantize(x0, keys=keys), "mc", self.val_n_t, keys=keys)
        self.val_K.update(K)
        self.val_K_minus_L_null.update(K - L_null)
        self.log("val/K", self.val_K, prog_bar=True)
        self.log("val/K_minus_L_null", self.val_K_minus_L_null)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        factory = self.lr_scheduler_factory
        if getattr(factory, "keywords", {}).get("total_steps", 0) is None:  # a schedule over the run's own length
            factory = functools.partial(factory, total_steps=max(1, int(self.trainer.estimated_stepping_batches)))
        scheduler = factory(optimizer)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):  # stepped after each validation
            every = self.trainer.check_val_every_n_epoch
            if not every:
                raise ValueError("lr_scheduler=plateau is stepped after each validation, so it needs validations "
                                 "every few epochs: set trainer.check_val_every_n_epoch (and val_check_interval=1.0)")
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/K",
                                                             "interval": "epoch", "frequency": int(every)}}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["dpm_config"] = self.run_config
        if self.t_sampler is not None:
            checkpoint["dpm_t_sampler"] = self.t_sampler.state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # torch.compile'd networks save their weights under net._orig_mod.*
        checkpoint["state_dict"] = {k.replace("._orig_mod", ""): v for k, v in checkpoint["state_dict"].items()}
        if self._trainer is None:  # a plain load (evaluate.py), not a resumed fit
            return
        if self.t_sampler is not None and "dpm_t_sampler" in checkpoint:  # else (a uniform run's) it starts afresh
            self.t_sampler.load_state(checkpoint["dpm_t_sampler"])
        # The command's optimizer settings win over the saved ones (dpm.app.resume): Lightning restores the
        # optimizer and scheduler states from this dict after this hook.
        patch_optimizer_state(checkpoint, self.run_config.get("optimizer", {}))
        checkpoint["dpm_config"] = self.run_config

