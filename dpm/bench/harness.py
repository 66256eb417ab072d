"""python -m dpm.bench: throughput of the project's training step against a plain PyTorch loop, in one run.

On the device it finds (or --device), for one preset built from the project's own conf:

  (a) the project's DiffusionModule driven by a Lightning Trainer made from the preset's trainer, logger and
      callbacks config (validation and the end-of-training figure left out), with the chosen precision and
      compile settings; forward passes through trainer.validate (the module's validation_step);
  (b) a minimal plain-PyTorch loop of the same network and the same loss, -(K - L_null) with one t per example
      (dpm.core.bound.K_per_example, the data already on the device, t and noise drawn there), and for forward passes
      the same estimator as validation (val_n_t stratified draws of t) under inference_mode.

The two alternate within one process: the plain side's segments run inside the Trainer's loop (a callback
between steps), so drift and contention hit both alike. Reported: images/s of each and the ratio (a)/(b),
with its spread over the rounds; fit's setup and the warm-up steps (compilation) are timed separately. Then the
wall time of the exact bound (keyed draws, as evaluate.py) on --bound-n images at T, peak memory and the device.

    python -m dpm.bench --preset swiss_roll
    python -m dpm.bench --preset cifar10 --batch 1024 --compile --channels-last --json bench.json
    python -m dpm.bench --preset digits trainer.log_every_n_steps=10     # extra Hydra overrides at the end

cifar10 runs on random CIFAR-shaped images (RandomImages), so it needs no download; speed does not depend on
the pixel values. A CPU ratio is a fair number; absolute CPU speeds are not.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Callable

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import open_dict

from dpm.app.build import build
from dpm.app.trainer import make_callbacks
from dpm.bench.plain import Plain
from dpm.bench.presets import (
    LEFT_OUT_CALLBACKS,
    PRECISIONS,
    autocast,
    preset_config,
    tile,
)
from dpm.core.bound import K_per_example
from dpm.core.keyed import Keys


class Alternate(L.Callback):
    """Runs the plain side between the Trainer's steps and times both: `warmup` steps of each untimed, then
    `rounds` x (`segment` module steps, `segment` plain steps). validation=True hooks validation batches."""

    def __init__(self, plain_step: Callable[[], None], warmup: int, segment: int, rounds: int,
                 sync: Callable[[], None], validation: bool = False) -> None:
        self.plain_step, self.warmup, self.segment, self.rounds = plain_step, warmup, segment, rounds
        self.sync, self.validation = sync, validation
        self.done, self.start, self.t0 = 0, None, 0.0
        self.module_times: list[float] = []
        self.plain_times: list[float] = []
        self.warmup_times: dict[str, float] = {}

    @property
    def total(self) -> int:
        return self.warmup + self.segment * self.rounds

    def _start(self) -> None:
        if self.start is None:
            self.sync()
            self.start = time.perf_counter()

    def _plain(self, n: int) -> float:
        self.sync()
        t = time.perf_counter()
        for _ in range(n):
            self.plain_step()
        self.sync()
        return time.perf_counter() - t

    def _tick(self) -> None:
        self.done += 1
        if self.done == self.warmup:
            self.sync()
            self.warmup_times["module"] = time.perf_counter() - self.start
            self.warmup_times["plain"] = self._plain(self.warmup)
            self.t0 = time.perf_counter()
        elif self.done > self.warmup and (self.done - self.warmup) % self.segment == 0 \
                and len(self.module_times) < self.rounds:
            self.sync()
            self.module_times.append(time.perf_counter() - self.t0)
            self.plain_times.append(self._plain(self.segment))
            self.t0 = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if not self.validation:
            self._start()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not self.validation:
            self._tick()

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.validation:
            self._start()

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.validation:
            self._tick()

    def result(self, images_per_step: int) -> dict:
        if len(self.module_times) < self.rounds:
            raise RuntimeError(f"only {len(self.module_times)} of {self.rounds} rounds ran: the loader ran out of "
                               "batches (raise the data size or lower the steps)")
        a, b = sum(self.module_times), sum(self.plain_times)
        n = images_per_step * self.segment * self.rounds
        ratios = [pb / pa for pa, pb in zip(self.module_times, self.plain_times)]
        return {"module_images_per_s": n / a, "plain_images_per_s": n / b, "ratio": b / a,
                "ratio_min": min(ratios), "ratio_median": float(np.median(ratios)), "ratio_max": max(ratios),
                "module_s": a, "plain_s": b,
                "steps_per_side": self.segment * self.rounds, "images_per_step": images_per_step,
                "warmup_steps": self.warmup, "warmup_module_s": self.warmup_times["module"],
                "warmup_plain_s": self.warmup_times["plain"]}


class Bench:
    """Everything one run measures, built from a preset."""

    def __init__(self, args: argparse.Namespace, out_dir: str) -> None:
        self.args, self.out_dir = args, out_dir
        self.device = torch.device(args.device if args.device != "auto"
                                   else ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
            torch.set_float32_matmul_precision("high")  # TF32
            torch.backends.cudnn.benchmark = True
        self.precision = args.precision or ("bf16-mixed" if self.device.type == "cuda" else "32-true")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision} is not benchmarked; valid choices: {list(PRECISIONS)}")
        overrides = list(args.overrides)
        if args.batch:
            overrides.append(f"dataset.batch_size={args.batch}")
        self.cfg = preset_config(args.preset, overrides, out_dir)
        L.seed_everything(self.cfg.seed, verbose=False)
        self.dm, self.module = build(self.cfg)
        self.batch = int(self.cfg.dataset.batch_size)
        self.n_t = int(self.module.val_n_t)
        self.forward_batch = args.forward_batch or int(self.cfg.dataset.eval_batch_size)
        plain_net = copy.deepcopy(self.module.net)
        plain_diffusion = copy.deepcopy(self.module.diffusion)
        self.module.net = self.prepare(self.module.net)
        self.module.compile_loss = args.compile  # training compiles the whole per-example loss, as compile=true
        self.plain = Plain(self.prepare(plain_net), plain_diffusion.to(self.device), instantiate(self.cfg.optimizer),
                           self.dm, self.module.units_per_example, self.device, self.precision, self.batch, self.n_t,
                           compile=args.compile)

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        """The same treatment for both sides: device, memory format, compilation (of the network alone, for the
        forward passes and the bound; training compiles each side's whole loss)."""
        net = net.to(self.device)
        if self.args.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.args.compile:
            net.compile(dynamic=False)
        return net

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None

    def trainer(self, callbacks: list, **kwargs) -> L.Trainer:
        """A Trainer from the preset's own trainer, callbacks and logger config, on the chosen device."""
        with open_dict(self.cfg):
            self.cfg.trainer.enable_progress_bar = not self.args.no_progress_bar
        keep = [cb for cb in make_callbacks(self.cfg) if type(cb).__name__ not in LEFT_OUT_CALLBACKS]
        loggers = [instantiate(c) for c in (self.cfg.get("logger") or {}).values() if c is not None]
        settings = dict(accelerator=self.device.type, devices=[self.device.index] if self.device.type == "cuda" else 1,
                        precision=self.precision, num_sanity_val_steps=0, enable_model_summary=False)
        if self.args.no_logger:
            loggers = []
        if not loggers:  # it refuses to run without one
            keep = [cb for cb in keep if not isinstance(cb, LearningRateMonitor)]
        return instantiate(self.cfg.trainer, **settings, **kwargs, callbacks=keep + callbacks,
                           logger=loggers or False)

    def train(self) -> dict:
        a = self.args
        alt = Alternate(self.plain.train_step, a.warmup, a.steps // a.rounds, a.rounds, self.sync)
        trainer = self.trainer([alt], max_steps=alt.total, limit_val_batches=0)
        self.reset_peak()
        start = time.perf_counter()
        trainer.fit(self.module, datamodule=self.dm)
        result = alt.result(self.batch)
        result.update(fit_setup_s=alt.start - start, fit_total_s=time.perf_counter() - start,
                      peak_memory_gib=self.peak_gib())
        return result

    def forward(self) -> dict:
        a = self.args
        segment = max(1, a.forward_steps // a.rounds)
        alt = Alternate(lambda: self.plain.forward_step(self.forward_batch), a.warmup, segment, a.rounds,
                        self.sync, validation=True)
        self.dm.eval_batch_size = self.forward_batch
        self.dm.splits["val"] = tile(self.dm.splits["val"], alt.total * self.forward_batch)
        trainer = self.trainer([alt], limit_val_batches=alt.total)
        self.reset_peak()
        start = time.perf_counter()
        trainer.validate(self.module, datamodule=self.dm, verbose=False)
        result = alt.result(self.forward_batch * self.n_t)
        result.update(setup_s=alt.start - start, peak_memory_gib=self.peak_gib())
        return result

    def bound(self) -> dict:
        """The exact bound (every t, keyed draws as evaluate.py) on n images: wall time, or its extrapolation
        from the terms done when --bound-max-seconds runs out."""
        a = self.args
        module, dm = self.module, self.dm
        T = a.bound_T or int(self.cfg.T)
        if T != int(self.cfg.T):
            with open_dict(self.cfg):
                self.cfg.T = T
            dm, module = build(self.cfg)
            module.net = self.prepare(module.net)
        diffusion, net = module.diffusion.to(self.device), module.net.eval()
        n, batch = a.bound_n, min(a.bound_batch, a.bound_n)
        data = tile(dm.splits["test"], n).to(self.device)
        precision = a.bound_precision
        total_terms = n * (T - 1)

        class OutOfTime(Exception):
            pass

        done = 0
        self.reset_peak()
        with torch.inference_mode(), autocast(self.device, precision):
            x0 = dm.dequantize(data[:batch], Keys(a.seed, torch.arange(batch, device=self.device)))
            for step in (2, T):  # warm-up: kernel choice, compilation for this batch shape
                t = torch.full((batch,), step, device=self.device)
                diffusion.kl_term(net, x0, t, keys=Keys(a.seed, torch.arange(batch, device=self.device)))
            self.sync()
            start = time.perf_counter()

            def on_terms(k: int) -> None:
                nonlocal done
                done += k
                if a.bound_max_seconds and time.perf_counter() - start > a.bound_max_seconds:
                    raise OutOfTime

            try:
                for i in range(0, n, batch):
                    keys = Keys(a.seed, torch.arange(i, min(i + batch, n), device=self.device))
                    x0 = dm.dequantize(data[i:i + batch], keys)
                    K_per_example(diffusion, net, x0, "exact", keys=keys, on_terms=on_terms)
            except OutOfTime:
                pass
            self.sync()
        seconds = time.perf_counter() - start
        complete = done == total_terms
        return {"n": n, "T": T, "batch": batch, "precision": precision, "seconds": seconds, "complete": complete,
                "terms_done": done, "seconds_for_n": seconds * total_terms / max(done, 1),
                "network_passes_per_s": done / seconds, "peak_memory_gib": self.peak_gib()}


