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
import json
import math
import platform
import resource
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, open_dict

from dpm.core.bound import LN2, K_per_example
from dpm.core.keyed import Keys
from dpm.app.build import build
from dpm.app.compose import compose
from dpm.app.trainer import make_callbacks

PRESETS = {  # the project's own configs
    "swiss_roll": ["dataset=swiss_roll"],
    "heartbeat": ["dataset=heartbeat"],
    "digits": ["experiment=digits_cpu"],
    "cifar10": ["experiment=cifar10"],
}
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
LEFT_OUT_CALLBACKS = ("SampleFigure",)  # draws T-step samples at the end of training: not a per-step cost


def preset_config(preset: str, overrides: list[str] = (), out_dir: str = ".") -> DictConfig:
    """The composed train config of a preset (cifar10 with RandomImages in place of its files)."""
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r} is unknown; valid choices: {sorted(PRESETS)}")
    cfg = compose([*PRESETS[preset], *overrides])
    with open_dict(cfg):
        cfg.out_dir = out_dir
        cfg.compile = False  # the bench compiles both sides itself, the same way
        if preset == "cifar10":
            old = cfg.dataset
            cfg.dataset = {"_target_": "dpm.data.random_images.RandomImages", "shape": [3, 32, 32],  # CIFAR-10's sizes
                           "n_train": old.get("n_train") or 45000, "n_val": old.get("n_val") or 5000,
                           "n_test": old.get("n_test") or 10000, "batch_size": old.batch_size,
                           "eval_batch_size": old.eval_batch_size,
                           "dequantization": old.get("dequantization", "bin"), "seed": old.get("seed", 0)}
    return cfg


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def autocast(device: torch.device, precision: str):
    """The autocast a Lightning precision plugin puts around the forward pass."""
    if precision == "32-true":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision.startswith("bf16") else torch.float16)


def tile(x: torch.Tensor, n: int) -> torch.Tensor:
    """The first n rows of x repeated as often as needed."""
    return x.repeat(math.ceil(n / len(x)), *([1] * (x.dim() - 1)))[:n]


class Plain:
    """The minimal loop: network, optimizer and data on the device; loss = -(K - L_null) in the module's units."""

    def __init__(self, net: torch.nn.Module, diffusion: torch.nn.Module, optimizer: Callable, dm,
                 units_per_example: int, device: torch.device, precision: str, batch: int, n_t: int) -> None:
        self.net, self.diffusion = net, diffusion
        self.optimizer = optimizer([*net.parameters(), *diffusion.parameters()])
        self.dm, self.device, self.precision, self.batch, self.n_t = dm, device, precision, batch, n_t
        self.scale = 1.0 / (LN2 * units_per_example)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
        self.train_data = dm.splits["train"].to(device)
        self.val_data = dm.splits["val"].to(device)

    def batch_of(self, data: torch.Tensor, n: int) -> torch.Tensor:
        x0 = data[torch.randint(len(data), (n,), device=self.device)]
        return self.dm.dequantize(x0)

    def train_step(self) -> None:
        x0 = self.batch_of(self.train_data, self.batch)
        with autocast(self.device, self.precision):
            K = K_per_example(self.diffusion, self.net, x0, "mc", 1)
            loss = -(K - self.diffusion.L_null(x0)).mean() * self.scale
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    @torch.inference_mode()
    def forward_step(self, batch: int) -> None:
        x0 = self.batch_of(self.val_data, batch)
        with autocast(self.device, self.precision):
            (K_per_example(self.diffusion, self.net, x0, "mc", self.n_t) - self.diffusion.L_null(x0)).mean()


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
        self.plain = Plain(self.prepare(plain_net), plain_diffusion.to(self.device), instantiate(self.cfg.optimizer),
                           self.dm, self.module.units_per_example, self.device, self.precision, self.batch, self.n_t)

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        """The same treatment for both sides: device, memory format, compilation."""
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


def format_report(r: dict) -> str:
    lines = [f"dpm.bench: preset {r['preset']} on {r['device']} ({r['device_type']}), torch {r['torch']}, "
             f"lightning {r['lightning']}",
             f"precision {r['precision']}, compile {'on' if r['compile'] else 'off'}, channels_last "
             f"{'on' if r['channels_last'] else 'off'}, batch {r['batch']}, T {r['T']}, "
             f"{r['parameters'] / 1e6:.2f}M parameters"]
    header = f"{'':<18}{'module (a)':>14}{'plain (b)':>14}{'(a)/(b)':>10}   {'rounds: median (min..max)':<27}work"
    rows = []
    for key, label in (("train", "train images/s"), ("forward", "forward images/s")):
        m = r.get(key)
        if m:
            rows.append(f"{label:<18}{m['module_images_per_s']:>14,.0f}{m['plain_images_per_s']:>14,.0f}"
                        f"{m['ratio']:>10.3f}   {m['ratio_median']:.3f} ({m['ratio_min']:.3f}..{m['ratio_max']:.3f})"
                        f"{'':<6}{m['steps_per_side']} steps x {m['images_per_step']} per side")
    if rows:
        lines += [header, *rows]
    if r.get("train"):
        m = r["train"]
        lines.append(f"fit setup {m['fit_setup_s']:.2f} s; warm-up {m['warmup_steps']} steps: module "
                     f"{m['warmup_module_s']:.2f} s, plain {m['warmup_plain_s']:.2f} s (not in the rates)")
    if r.get("bound"):
        b = r["bound"]
        how = ("measured" if b["complete"]
               else f"extrapolated from {b['terms_done']:,} of {b['n'] * (b['T'] - 1):,} terms")
        lines.append(f"exact bound, {b['n']:,} images at T = {b['T']} (batch {b['batch']}, {b['precision']}, keyed "
                     f"draws): {b['seconds_for_n']:.1f} s ({how}); {b['network_passes_per_s']:,.0f} network "
                     "passes/s")
    if r.get("floor"):
        f = r["floor"]
        lines.append(f"Lightning's loop alone (a one-parameter module, no logger, bar or checkpoints; {f['steps']} steps): "
                     f"{f['lightning_s_per_step'] * 1e6:.0f} us per step, plain loop {f['plain_s_per_step'] * 1e6:.0f} us")
    peaks = [f"{k} {r[k]['peak_memory_gib']:.2f} GiB" for k in ("train", "forward", "bound")
             if r.get(k) and r[k].get("peak_memory_gib") is not None]
    lines.append("peak memory: " + (", ".join(peaks) if peaks else f"process RSS {r['max_rss_gib']:.2f} GiB"))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dpm.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="swiss_roll", choices=sorted(PRESETS))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    p.add_argument("--precision", default=None,
                   help=f"one of {list(PRECISIONS)}; default bf16-mixed on a GPU, 32-true on the CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (both sides)")
    p.add_argument("--channels-last", action="store_true", help="channels_last network weights (both sides)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the preset's)")
    p.add_argument("--steps", type=int, default=300, help="timed training steps per side")
    p.add_argument("--forward-steps", type=int, default=50, help="timed forward batches per side")
    p.add_argument("--forward-batch", type=int, default=None, help="examples per forward batch (default: the "
                   "preset's eval_batch_size); each is evaluated at val_n_t times")
    p.add_argument("--rounds", type=int, default=5, help="alternations of the two sides")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps of each side first")
    p.add_argument("--bound-n", type=int, default=1000, help="images for the exact bound (0: skip it)")
    p.add_argument("--bound-T", type=int, default=None, help="T for the exact bound (default: the preset's)")
    p.add_argument("--bound-batch", type=int, default=1000)
    p.add_argument("--bound-precision", default="32-true", choices=PRECISIONS,
                   help="evaluate.py's default is 32-true (TF32 matmuls on a GPU)")
    p.add_argument("--bound-max-seconds", type=float, default=None,
                   help="stop the bound after this long and extrapolate to --bound-n")
    p.add_argument("--seed", type=int, default=0, help="the keyed draws' seed for the bound")
    p.add_argument("--floor-steps", type=int, default=2000,
                   help="steps of Lightning's loop around a one-parameter module, against a plain loop (0: skip)")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-forward", action="store_true")
    p.add_argument("--no-progress-bar", action="store_true", help="(a) without the progress bar")
    p.add_argument("--no-logger", action="store_true", help="(a) without the configured logger")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the preset, e.g. net.hidden=256")
    args = p.parse_args(argv)
    for key in ("steps", "rounds", "warmup"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1")
    if args.steps < args.rounds or args.forward_steps < args.rounds:
        p.error("--steps and --forward-steps must be at least --rounds")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dpm-bench-") as out_dir:
        bench = Bench(args, out_dir)
        result = {"preset": args.preset, "device": device_name(bench.device), "device_type": bench.device.type,
                  "torch": torch.__version__, "lightning": L.__version__, "precision": bench.precision,
                  "compile": args.compile, "channels_last": args.channels_last, "batch": bench.batch,
                  "T": int(bench.cfg.T), "val_n_t": bench.n_t,
                  "parameters": sum(p.numel() for p in bench.plain.net.parameters())}
        if not args.no_train:
            result["train"] = bench.train()
        if not args.no_forward:
            result["forward"] = bench.forward()
        if args.bound_n > 0:
            result["bound"] = bench.bound()
        if args.floor_steps > 0:
            result["floor"] = lightning_floor(bench.device, args.floor_steps)
    result["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(format_report(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
