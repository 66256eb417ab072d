"""Learning-rate schedules that configs name (the optimizers themselves are torch.optim classes), and the
command's optimizer settings written into a resumed checkpoint's saved state."""

from __future__ import annotations

import math
from functools import partial

import torch


def released_lr_decay(optimizer: torch.optim.Optimizer, every: int = 500, factor: float = 10 ** (-1 / 1000),
                      floor: float = 1e-4) -> torch.optim.lr_scheduler.LambdaLR:
    """The released code's schedule (docs/paper.md §5.4): lr <- lr * factor after every `every` steps (an "epoch" of
    500 minibatches there), never below `floor`. Step it every optimizer step."""
    base = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(_decay, every=every, factor=factor, floor_ratio=min(1.0, floor / base)))


def cosine_to_floor(optimizer: torch.optim.Optimizer, total_steps: int | None = None, floor: float = 0.01,
                    warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay of the lr to `floor` x its start over total_steps (None: the training
    run's own length, trainer.max_steps or max_epochs epochs, whichever ends it first; filled in by
    DiffusionModule.configure_optimizers)."""
    if total_steps is None:
        raise ValueError("lr_scheduler.total_steps=null means the run's own length, which only the training run knows")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(_cosine, total=total_steps, floor=floor, warmup=warmup_steps))


def _decay(step: int, every: int, factor: float, floor_ratio: float) -> float:
    return max(factor ** (step // every), floor_ratio)


def _cosine(step: int, total: int, floor: float, warmup: int) -> float:


    if step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))


def patch_optimizer_state(checkpoint: dict, optimizer_cfg: dict) -> None:
    """Write the command's optimizer hyperparameters into the checkpoint's saved optimizer and scheduler state.

    lr is kept at the same point of its schedule: the group's lr is scaled by new / old base lr, and the
    schedulers' base_lrs (LambdaLR multiplies them by its factor) become the new lr.
    """
    hyper = {k: v for k, v in optimizer_cfg.items() if not k.startswith("_")}
    for opt_state in checkpoint.get("optimizer_states", []):
        for group in opt_state.get("param_groups", []):
            old_base = group.get("initial_lr", group.get("lr"))
            for key, value in hyper.items():
                if key == "lr":
                    ratio = group["lr"] / old_base if old_base else 1.0
                    group["lr"] = value * ratio
                    if "initial_lr" in group:
                        group["initial_lr"] = value
                elif key in group:
                    group[key] = tuple(value) if isinstance(group[key], tuple) else value
    if "lr" in hyper:
        for sched in checkpoint.get("lr_schedulers", []):
            if "base_lrs" in sched:
                sched["base_lrs"] = [hyper["lr"] for _ in sched["base_lrs"]]
