"""Shared fixtures: composing the Hydra config the way train.py does, without running Hydra's app."""

from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides=(), config_name="train"):
    """The config train.py (or evaluate.py) would get for these command-line overrides."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides, config_name="train") -> DictConfig."""
    return compose
