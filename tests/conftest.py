"""Shared fixtures: composing the Hydra config the way train.py does, without running Hydra's app; the `slurm`
marker (tests that submit jobs to a real SLURM cluster: skipped with the reason when no controller answers, failed
instead when DPM_REQUIRE_SLURM=1, as .ci/run sets after starting scripts/slurm-local.sh)."""

import functools
import os
import shutil
import subprocess

import pytest

from dpm.app.compose import compose


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides, config_name="train") -> DictConfig."""
    return compose


@functools.cache
def slurm_missing() -> str | None:
    """Why no SLURM cluster can take jobs here, or None when its controller answers."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return ("no SLURM client here (sbatch, scontrol): scripts/slurm-local.sh up installs and starts a one-node "
                "cluster")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "scontrol ping did not answer within 30 s"
    if "UP" not in ping.stdout:
        answer = (ping.stdout + ping.stderr).strip().splitlines()
        return (f"no SLURM controller answers ({answer[0] if answer else 'scontrol ping failed'}): "
                "scripts/slurm-local.sh up starts a one-node cluster")
    return None


def pytest_runtest_setup(item):
    if item.get_closest_marker("slurm") is None:
        return
    why = slurm_missing()
    if why is None:
        return
    if os.environ.get("DPM_REQUIRE_SLURM") == "1":
        pytest.fail(f"DPM_REQUIRE_SLURM=1 but {why}", pytrace=False)
    pytest.skip(why)
