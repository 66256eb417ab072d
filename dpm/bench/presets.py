"""The benchmark's presets (the project's own configs) and what both sides of a comparison share: the device's
name, the autocast a precision means, a data set tiled to a size."""

from __future__ import annotations

import math
import platform
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from dpm.app.compose import compose

PRESETS = {  # the project's own configs
    "swiss_roll": ["dataset=swiss_roll"],
    "heartbeat": ["dataset=heartbeat"],
    "digits": ["experiment=digits_cpu"],
    "dead_leaves": ["experiment=dead_leaves_cpu"],  # 16x16 patches, generated
    "dead_leaves_paper": ["experiment=dead_leaves"],  # the paper's scale (32x32, 3 scales), generated
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


