"""Shared fixtures: composing the Hydra config the way train.py does, without running Hydra's app."""

import pytest

from dpm.app.compose import compose


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides, config_name="train") -> DictConfig."""
    return compose
