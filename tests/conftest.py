"""Shared fixtures: composing the Hydra config the way train.py does, without running Hydra's app; the `slurm`
marker (tests that submit jobs to a real SLURM cluster: skipped with the reason when no controller answers, failed
instead when DPM_REQUIRE_SLURM=1, as .ci/run sets after starting scripts/slurm-local.sh); and a check, for the whole
session, that no test wrote into the repository (every test writes only under its own tmp_path)."""

import functools
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from dpm.app.compose import compose

ROOT = Path(__file__).resolve().parents[1]
# Where a command run from the repository writes by default (all git-ignored, so git status does not show them):
# run directories, sweeps, W&B's offline runs, downloads and caches.
RUN_OUTPUTS = ("outputs", "multirun", "wandb", "data")
_STATE = pytest.StashKey[dict]()


def repository_state() -> dict[str, object]:
    """What a test must leave as it found it: `git status --porcelain` (tracked and untracked files), and every
    entry under RUN_OUTPUTS with its size, modification time and, for a link, its target (outputs/latest)."""
    state: dict[str, object] = {}
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        if status.returncode == 0:
            state["git status --porcelain"] = status.stdout
    except (OSError, subprocess.TimeoutExpired):  # no git, or not a checkout: the folders below still count
        pass
    for name in RUN_OUTPUTS:
        top = ROOT / name
        paths = [top] if top.exists() or top.is_symlink() else []
        for folder, dirs, files in os.walk(top):
            paths += [Path(folder) / entry for entry in dirs + files]
        for path in paths:
            st = path.lstat()
            state[str(path.relative_to(ROOT))] = (st.st_size, st.st_mtime_ns,
                                                  os.readlink(path) if path.is_symlink() else None)
    return state


def pytest_sessionstart(session):
    session.config.stash[_STATE] = repository_state()
    # Started in the background by a shell without job control, pytest (and every process it starts) would ignore
    # SIGINT; the tests of Ctrl-C need it delivered as a terminal delivers it. A handler, unlike an ignored signal,
    # is reset to the default in the processes the tests start.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(_STATE, None)
    if before is None:
        return
    after = repository_state()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if not changed:
        return
    lines = [f"  {k}: {before.get(k, 'absent')!r} -> {after.get(k, 'absent')!r}"[:400] for k in changed[:20]]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = ("the tests changed the repository's tree (a test must write only under its own tmp_path):\n"
               + "\n".join(lines) + (f"\n  ... and {len(changed) - 20} more" if len(changed) > 20 else ""))
    if reporter is not None:
        reporter.write_sep("=", "repository changed", red=True)
        reporter.write_line(message)
    else:
        print(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED



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
