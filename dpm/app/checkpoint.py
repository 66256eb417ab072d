"""Checkpoints as data: reading one safely (weights_only, a checked config), rebuilding a model from it, and
writing them atomically.

A checkpoint is data, never code (docs/contracts.md, contract 10): torch.load runs with weights_only=True pinned (an
environment variable cannot lift it), and the config inside is checked against dpm.app.checks.ALLOWED_TARGETS
before anything it names is instantiated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dpm.app.checks import check_data_only, check_targets
from dpm.errors import ConfigError
from dpm.io.files import remove_stale_temps, write_atomic

WEIGHTS = ("auto", "raw", "ema")
# Where classes named by checkpoints written before the package was split into layers live now; the first
# prefix that matches applies (the figure callbacks before the rest of their old module).
MOVED_TARGETS = {"dpm.callbacks.SampleFigure": "dpm.figures.callbacks.SampleFigure",
                 "dpm.callbacks.ScheduleFigure": "dpm.figures.callbacks.ScheduleFigure",
                 "dpm.model.callbacks.SampleFigure": "dpm.figures.callbacks.SampleFigure",
                 "dpm.model.callbacks.ScheduleFigure": "dpm.figures.callbacks.ScheduleFigure",
                 "dpm.schedules.": "dpm.core.schedules.", "dpm.gaussian.": "dpm.core.gaussian.",
                 "dpm.binomial.": "dpm.core.binomial.", "dpm.callbacks.": "dpm.model.callbacks.",
                 "dpm.optim.": "dpm.model.optim.", "dpm.sweep.": "dpm.sweeps.jobs."}


def renamed_targets(node: Any) -> Any:
    """A checkpoint's config with every `_target_` under an old module path (MOVED_TARGETS) given its new one,
    so that older checkpoints still load; nothing else changes (what is allowed is checked afterwards)."""
    if isinstance(node, dict):
        out = {k: renamed_targets(v) for k, v in node.items()}
        target = out.get("_target_")
        if isinstance(target, str):
            for old, new in MOVED_TARGETS.items():
                if target.startswith(old):
                    out["_target_"] = new + target[len(old):]
                    break
        return out
    if isinstance(node, list):
        return [renamed_targets(v) for v in node]
    return node


def load_checkpoint(path: str | Path | None, key: str = "ckpt_path", trusted: tuple[str, ...] = ()) -> dict:
    """A dpm checkpoint as a dict, with a clear error for a missing, unreadable, foreign or unsafe file.
    `trusted`: the packages the command (never the checkpoint) trusts (dpm.app.trust)."""
    if path is None or str(path) in ("", "???"):
        raise ConfigError(f"{key} is required: python evaluate.py {key}=outputs/<date>/<time>/checkpoints/last.ckpt")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}={path} is not a file (train.py writes <run dir>/checkpoints/last.ckpt)")
    remove_stale_temps(path.parent)  # what checkpoint writes killed mid-write left there
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated, foreign or unsafe files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"{key}={path} could not be read as a checkpoint ({type(err).__name__}: {first[:300]}). "
                          "Only files written by train.py load, and they load as data (weights_only=True).") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("dpm_config"), dict) or "state_dict" not in ckpt:
        raise ConfigError(f"{key}={path} is not a dpm checkpoint (no dpm_config / state_dict in it)")
    check_data_only(ckpt["dpm_config"], f"{key}={path}")
    _check_structure(ckpt, f"{key}={path}")
    ckpt["dpm_config"] = renamed_targets(ckpt["dpm_config"])
    try:
        check_targets(ckpt["dpm_config"], source=f"the checkpoint {path}", trusted=tuple(trusted))
    except ConfigError as err:
        raise ConfigError(f"{err} Nothing from this checkpoint was built.") from None
    return ckpt


RUN_NODES = ("dataset", "schedule", "diffusion", "net", "optimizer")  # each a `_target_` node in a run's config


def _check_structure(ckpt: dict, where: str) -> None:
    """A dpm_config that is a run's config (its nodes, T) and a state_dict of tensors, before anything reads
    them: a checkpoint with those two keys but something else inside is refused by name, not by a KeyError."""
    config, state = ckpt["dpm_config"], ckpt["state_dict"]
    bad = [n for n in RUN_NODES if not isinstance(config.get(n), dict) or not isinstance(config[n].get("_target_"), str)]
    T = config.get("T")
    if bad or isinstance(T, bool) or not isinstance(T, int):
        what = (f"its nodes {bad} are missing or not `_target_` nodes" if bad else f"its T={T!r} is not an integer")
        raise ConfigError(f"{where} is not a usable dpm checkpoint: dpm_config is not a training run's config ({what})")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ConfigError(f"{where} is not a usable dpm checkpoint: state_dict is not a mapping of names to tensors")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through a temporary file renamed into place: a full disk or a crash
    mid-write leaves the previous checkpoint intact and no empty or truncated file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        write_atomic(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None):
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
