"""Composing a config the way train.py and evaluate.py do, for code that runs without Hydra's app (the benchmark,
the tests): one place that knows where the project's `conf/` is."""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from dpm.app.hydra_guard import install as guard_hydra
from dpm.errors import ConfigError


def config_dir() -> Path:
    """The project's `conf/` folder: beside the `dpm` package in a checkout (`pip install -e .`)."""
    path = Path(__file__).resolve().parents[2] / "conf"
    if not (path / "train.yaml").is_file():
        raise ConfigError(f"no conf/train.yaml at {path}: dpm runs from a checkout of the project "
                          "(pip install -e . in the cloned folder)")
    return path


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train",
            return_hydra_config: bool = False) -> DictConfig:
    """The config `python train.py OVERRIDES` (or evaluate.py, config_name="evaluate") would receive; with
    return_hydra_config, its `hydra` node too (as Hydra's launchers and callbacks see it)."""
    guard_hydra(config_dir())
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            return hydra_compose(config_name=config_name, overrides=list(overrides),
                                 return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()
