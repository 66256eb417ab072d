"""Checkpoints as data: reading one safely (weights_only, a checked config), rebuilding a model from it, and
writing them atomically.

A checkpoint is data, never code (DESIGN.md contract 10): torch.load runs with weights_only=True pinned (an
environment variable cannot lift it), and the config inside is checked against dpm.checks.ALLOWED_TARGETS
before anything it names is instantiated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import OmegaConf

from dpm.checks import ConfigError, check_keys, check_targets
from dpm.files import write_atomic

WEIGHTS = ("auto", "raw", "ema")


def load_checkpoint(path: str | Path | None, key: str = "ckpt_path") -> dict:
    """A dpm checkpoint as a dict, with a clear error for a missing, unreadable, foreign or unsafe file."""
    if path is None or str(path) in ("", "???"):
        raise ConfigError(f"{key} is required: python evaluate.py {key}=outputs/<date>/<time>/checkpoints/last.ckpt")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}={path} is not a file (train.py writes <run dir>/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated, foreign or unsafe files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"{key}={path} could not be read as a checkpoint ({type(err).__name__}: {first[:300]}). "
                          "Only files written by train.py load, and they load as data (weights_only=True).") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("dpm_config"), dict) or "state_dict" not in ckpt:
        raise ConfigError(f"{key}={path} is not a dpm checkpoint (no dpm_config / state_dict in it)")
    try:
        check_targets(ckpt["dpm_config"], source=f"the checkpoint {path}")
    except ConfigError as err:
        raise ConfigError(f"{err} Nothing from this checkpoint was built.") from None
    return ckpt


def checkpoint_config(ckpt: dict) -> Any:
    """The checkpoint's run config as a DictConfig, its keys checked against the constructors."""
    cfg = OmegaConf.create(ckpt["dpm_config"])
    check_keys(cfg)
    return cfg


def restore(ckpt: dict, weights: str = "auto"):
    """Rebuild data module and model from a checkpoint (checked by load_checkpoint); returns (dm, module,
    which weights were loaded)."""
    from dpm.run import build

    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r} is unknown; valid choices: {list(WEIGHTS)}")
    cfg = checkpoint_config(ckpt)
    dm_state = next((v for k, v in ckpt.items() if k.endswith("DataModule")), None)
    dm, module = build(cfg, dm_state)
    has_ema = "current_model_state" in ckpt  # Lightning's EMAWeightAveraging keeps the raw weights there
    if weights == "ema" and not has_ema:
        raise ConfigError("weights=ema but the checkpoint holds no EMA weights (train with callbacks=ema)")
    use_raw_copy = has_ema and weights == "raw"
    state = {"state_dict": ckpt["current_model_state"] if use_raw_copy else ckpt["state_dict"]}
    module.on_load_checkpoint(state)
    missing, unexpected = module.load_state_dict(state["state_dict"], strict=False)
    if missing or unexpected:
        raise ConfigError(f"the checkpoint's weights do not fit the network its config describes (missing "
                          f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]})")
    return dm, module, "ema" if has_ema and not use_raw_copy else "raw"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through a temporary file renamed into place: a full disk or a crash
    mid-write leaves the previous checkpoint intact and no empty or truncated file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        write_atomic(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None):
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
