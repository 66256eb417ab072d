"""Nothing runs, nothing is deleted: a checkpoint is data (no interpolation, no Hydra special key, no class outside
the allow-list is ever resolved or built from it), a config folder may set dpm's settings but not Hydra's own node
nor `trust`, and a refused command removes only what it created itself (docs/security.md).

Every hostile file here would create a marker file if anything in it ran; each test checks that it was not created.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dpm.app.checkpoint import load_checkpoint
from dpm.app.compose import compose
from dpm.app.rundir import CLAIM_FILE, claim, note_start, release
from dpm.errors import ConfigError
from tests.helpers import save_untrained
from tests.test_faults import TINY, cli_in_process

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["dataset.n_train=200", "dataset.n_val=50", "dataset.n_test=50", "T=6"]
# A package whose import, and whose classes' construction, leave a marker file: the proof that nothing of it ran.
EVIL = {
    "evilpkg/__init__.py": "import os\nopen(os.environ['DPM_TEST_MARKER'], 'w').write('imported')\n",
    "evilpkg/cb.py": "from hydra.experimental.callback import Callback\n\nclass Evil(Callback):\n    pass\n",
}


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    """The hostile package (on PYTHONPATH for subprocesses and sys.path here), a marker path, a good checkpoint."""
    root = tmp_path_factory.mktemp("security")
    for name, text in EVIL.items():
        (root / "pkgs" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "pkgs" / name).write_text(text)
    save_untrained(root / "good.ckpt", SMALL)
    return root


@pytest.fixture
def marker(evil, tmp_path, monkeypatch):
    path = tmp_path / "PWNED"
    monkeypatch.setenv("DPM_TEST_MARKER", str(path))
    monkeypatch.syspath_prepend(str(evil / "pkgs"))
    return path


def run(*args: str, marker: Path, evil: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "DPM_TEST_MARKER": str(marker),
           "PYTHONPATH": os.pathsep.join([str(evil / "pkgs"), os.environ.get("PYTHONPATH", "")])}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def hostile_checkpoint(evil: Path, out: Path, key: str, value) -> Path:
    ckpt = torch.load(evil / "good.ckpt", weights_only=True)
    node = ckpt["dpm_config"]
    *parents, last = key.split(".")
    for k in parents:
        node = node[k]
    node[last] = value
    torch.save(ckpt, out)
    return out


# ---- a checkpoint is data --------------------------------------------------------------------------------------
def _open(marker_name: str = "MARK") -> str:
    return "${oc.create:{_target_:builtins.open,_args_:['" + marker_name + "','w']}}"


HOSTILE_CHECKPOINTS = {
    # name: (key in the checkpoint's config, value); MARK is replaced by the marker's path
    "oc.create, nested": ("dataset.noise", _open()),
    "oc.decode, nested": ("dataset.noise", "${oc.decode:'{_target_: builtins.open, _args_: [MARK, w]}'}"),
    "custom resolver, at the top": ("T", "${dpm_test_marker:}"),
    "oc.create inside a list at the top": ("trust", [_open()]),
    "_partial_ on the data set": ("dataset._partial_", True),
    "_args_ on the network": ("net._args_", ["MARK"]),
    "a function of the standard library as the network": ("net._target_", "os.system"),
    "builtins.open as the data set": ("dataset._target_", "builtins.open"),
    "subprocess as the diffusion": ("diffusion._target_", "subprocess.Popen"),
}


@pytest.fixture
def marker_resolver(marker):
    """A custom resolver that would create the marker if a checkpoint's config were ever resolved."""
    OmegaConf.register_new_resolver("dpm_test_marker", lambda: marker.write_text("resolved") and 40, replace=True)
    yield
    OmegaConf.clear_resolver("dpm_test_marker")


@pytest.mark.parametrize("name", list(HOSTILE_CHECKPOINTS))
def test_a_hostile_checkpoint_is_refused_with_one_line_and_nothing_runs(evil, marker, marker_resolver, tmp_path,
                                                                       monkeypatch, capsys, name):
    key, value = HOSTILE_CHECKPOINTS[name]
    value = json.loads(json.dumps(value).replace("MARK", str(marker)))
    ckpt = hostile_checkpoint(evil, tmp_path / "hostile.ckpt", key, value)
    with pytest.raises(ConfigError):
        load_checkpoint(ckpt)
    out = tmp_path / "eval"
    assert cli_in_process("evaluate.py", [f"ckpt_path={ckpt}", f"hydra.run.dir={out}", "progress=false"],
                          monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and key.rsplit(".", 1)[0] in err
    assert not any(f"trust=[{pkg}" in err for pkg in ("os", "builtins", "subprocess"))
    assert not marker.exists() and not out.exists()
    # resuming training from it: refused alike
    run_dir = tmp_path / "resumed"
    assert cli_in_process("train.py", [*TINY, f"ckpt_path={ckpt}", f"hydra.run.dir={run_dir}"], monkeypatch) == 2
    assert not marker.exists() and not run_dir.exists()


def test_evaluate_py_refuses_a_checkpoint_with_an_interpolation(evil, marker, tmp_path):
    """As a user runs it (the attack that created the file before): exit 2, one line, no file, no directory."""
    ckpt = hostile_checkpoint(evil, tmp_path / "evil.ckpt", "dataset.noise", _open(str(marker)))
    out = tmp_path / "eval"
    result = run("evaluate.py", f"ckpt_path={ckpt}", f"hydra.run.dir={out}", marker=marker, evil=evil)
    assert result.returncode == 2, result.stderr
    assert "holds an interpolation at dataset.noise" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists() and not out.exists()


# ---- a config folder sets dpm's settings, never Hydra's node nor trust ----------------------------------------------
FOLDER = {
    "dataset/trusting.yaml": """
        # @package _global_
        defaults:
          - swiss_roll
        trust: [evilpkg]
        """,
    "experiment/callback.yaml": """
        # @package _global_
        hydra:
          callbacks:
            evil:
              _target_: evilpkg.cb.Evil
        """,
    "experiment/environment.yaml": """
        # @package _global_
        hydra:
          job:
            env_set:
              LD_PRELOAD: /tmp/evil.so
        """,
    "experiment/logging.yaml": """
        # @package _global_
        hydra:
          job_logging:
            handlers:
              file:
                class: evilpkg.cb.Evil
        """,
    "hydra/launcher/evil.yaml": """
        _target_: evilpkg.cb.Evil
        """,
    "dataset/interpolating.yaml": """
        # @package _global_
        defaults:
          - swiss_roll
        dataset:
          noise: "${oc.create:{_target_:builtins.open,_args_:['MARK','w']}}"
        """,
    "net/fine.yaml": """
        _target_: dpm.nets.mlp.MLP
        hidden: 16
        """,
}


@pytest.fixture
def folder(tmp_path, marker):
    root = tmp_path / "folder"
    for name, text in FOLDER.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip().replace("MARK", str(marker)))
    return root


@pytest.mark.parametrize("choice,sets", [("dataset=trusting", "trust"), ("experiment=callback", "hydra"),
                                         ("experiment=environment", "hydra"), ("experiment=logging", "hydra"),
                                         ("hydra/launcher=evil", "hydra")])
def test_a_config_folder_may_not_set_hydras_node_or_trust(folder, marker, choice, sets):
    with pytest.raises(ConfigError, match=rf"{folder}/.*\.yaml sets `{sets}`, which a config folder may not"):
        compose([f"hydra.searchpath=[file://{folder}]", choice], return_hydra_config=True)
    assert not marker.exists()
    # the folder's own settings of dpm's nodes are fine
    assert compose([f"hydra.searchpath=[file://{folder}]", "net=fine"]).net.hidden == 16


@pytest.mark.parametrize("choice,message", [
    ("dataset=trusting", "sets `trust`, which a config folder may not"),
    ("experiment=callback", "sets `hydra`, which a config folder may not"),
    ("dataset=interpolating", "dataset.noise._target_='builtins.open' in the config is refused"),
])
def test_train_py_with_a_hostile_config_folder_runs_nothing(evil, folder, marker, tmp_path, choice, message):
    """Through Hydra as a user runs it: before, each of these imported evilpkg or created the marker."""
    out = tmp_path / "run"
    result = run("train.py", f"hydra.searchpath=[file://{folder}]", choice, f"hydra.run.dir={out}", *TINY,
                 marker=marker, evil=evil)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists() and not out.exists()


def test_what_hydra_instantiates_passes_the_allow_list_with_the_typed_trust(evil, marker):
    """Typed on the command line, Hydra's callbacks, launcher and logging meet the same check as dpm's nodes: a
    class outside the allow-list needs its package in trust=[...] (never a suggestion for Python's own)."""
    with pytest.raises(ConfigError, match=r"hydra\.callbacks\.x\._target_='evilpkg\.cb\.Evil'.*trust=\[evilpkg\]"):
        compose(["+hydra.callbacks.x._target_=evilpkg.cb.Evil"], return_hydra_config=True)
    with pytest.raises(ConfigError, match=r"hydra\.callbacks\.x\._target_='os\.system'") as refused:
        compose(["+hydra.callbacks.x._target_=os.system"], return_hydra_config=True)
    assert "trust=[os" not in str(refused.value)
    with pytest.raises(ConfigError, match=r"handlers\.console\.class='subprocess\.Popen' is refused"):
        compose(["hydra.job_logging.handlers.console.class=subprocess.Popen"], return_hydra_config=True)
    with pytest.raises(ConfigError, match=r"'os' is part of Python itself"):
        compose(["trust=[os]"])
    with pytest.raises(ConfigError, match=r"launcher value must be one line"):
        compose(["hydra/launcher=slurm", "hydra.launcher.comment='1\ncurl x | sh'"], return_hydra_config=True)
    assert not marker.exists()
    cfg = compose(["+hydra.callbacks.x._target_=evilpkg.cb.Evil", "trust=[evilpkg]"], return_hydra_config=True)
    assert cfg.hydra.callbacks.x._target_ == "evilpkg.cb.Evil"  # trusted by the person at the command line


# ---- a refused command removes only what it created ------------------------------------------------------------------
def test_release_keeps_what_was_there_before_and_what_another_command_claimed(tmp_path):
    run_dir = tmp_path / "user" / "run"
    run_dir.mkdir(parents=True)
    for name in ("slurm-123.log", "train.log"):
        (run_dir / name).write_text("the user's own log\n")
    note_start(run_dir)
    claim(run_dir)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("a: 1\n")
    (run_dir / "checkpoints").mkdir()
    assert release(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["slurm-123.log", "train.log"]
    assert (run_dir / "train.log").read_text() == "the user's own log\n"
    # a directory another process claimed: nothing is touched
    other = tmp_path / "other"
    other.mkdir()
    (other / CLAIM_FILE).write_text(json.dumps({"what": "training run", "host": os.uname().nodename,
                                                "pid": os.getppid(), "started": None}))
    (other / ".hydra").mkdir()
    assert not release(other) and sorted(p.name for p in other.iterdir()) == [".dpm-claim", ".hydra"]


def test_a_typo_in_a_directory_of_user_logs_leaves_it_whole(evil, marker, tmp_path):
    run_dir = tmp_path / "parent" / "job"
    run_dir.mkdir(parents=True)
    (run_dir / "slurm-42.log").write_text("written by the scheduler before the job started\n")
    (run_dir / "folder").mkdir()
    result = run("train.py", *TINY, "T=abc", f"hydra.run.dir={run_dir}", marker=marker, evil=evil)
    assert result.returncode == 2 and "T='abc' is invalid" in result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["folder", "slurm-42.log"]  # its own train.log removed
    assert (run_dir / "slurm-42.log").read_text() == "written by the scheduler before the job started\n"
    # in a directory that did not exist, the same refusal leaves nothing (not even the folders above it)
    fresh = tmp_path / "new" / "deeper" / "run"
    result = run("train.py", *TINY, "T=abc", f"hydra.run.dir={fresh}", marker=marker, evil=evil)
    assert result.returncode == 2 and not (tmp_path / "new").exists()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert path.exists(), f"{path} did not appear (exit {proc.poll()})"


@pytest.fixture(scope="module")
def slow_ckpt(evil):
    """A checkpoint whose bound takes seconds (T = 2000), so that a second command can arrive while it runs."""
    path = evil / "heartbeat.ckpt"
    save_untrained(path, ["dataset=heartbeat", "T=2000", "dataset.n_test=2000", "dataset.n_train=64",
                          "dataset.n_val=16"])
    return path


@pytest.mark.parametrize("pairs", [pytest.param(1, id="1 pair"),
                                   pytest.param(10, id="10 pairs", marks=[pytest.mark.slow, pytest.mark.timeout(3000)])])
def test_a_command_refused_while_another_holds_the_directory_touches_nothing_of_it(evil, marker, slow_ckpt,
                                                                                   tmp_path, pairs):
    """Pairs of train.py and of evaluate.py into one hydra.run.dir: the second arrives while the first holds the
    directory (the first is stopped with SIGSTOP right after its claim, so the overlap is certain), is refused with
    exit 2 naming the holder, and leaves the first's claim, record and log in place; the first then ends with all
    its results."""
    env = {**os.environ, "DPM_TEST_MARKER": str(marker)}
    env.pop("HYDRA_FULL_ERROR", None)
    for i in range(pairs):
        for script, args, results in (
                ("evaluate.py", [f"ckpt_path={slow_ckpt}", "progress=false", "limit=8"], ["eval.json"]),
                ("train.py", [*TINY, "trainer.max_steps=200", "trainer.val_check_interval=100"],
                 ["eval.json", "config.yaml", "checkpoints/last.ckpt"])):
            out = tmp_path / f"{script}-{i}"
            command = [sys.executable, script, *args, f"hydra.run.dir={out}"]
            first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
            try:
                _wait_for(out / ".hydra" / "config.yaml", first)
                first.send_signal(signal.SIGSTOP)
                held = sorted(p.name for p in out.iterdir())
                second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
                assert second.returncode == 2, second.stderr[-2000:]
                assert f"hydra.run.dir={out} is in use by another command" in second.stderr
                assert sorted(p.name for p in out.iterdir()) == held and CLAIM_FILE in held
            finally:
                first.send_signal(signal.SIGCONT)
            _, err = first.communicate(timeout=300)
            assert first.returncode == 0, err[-2000:]
            assert all((out / name).is_file() for name in results) and (out / ".hydra" / "config.yaml").is_file()
            assert (out / f"{script.removesuffix('.py')}.log").is_file()
            assert not (out / CLAIM_FILE).exists()  # the first's claim ends with it: its results keep others out


def test_a_claim_left_by_a_killed_process_is_taken_over_or_named(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"what": "evaluation", "host": os.uname().nodename, "pid": int(gone.stdout), "started": "1"}
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / CLAIM_FILE).write_text(json.dumps(record))
    (killed / ".hydra").mkdir()
    (killed / "evaluate.log").write_text("the killed run's log\n")
    claim(killed, "evaluation")  # nothing of a run there: taken over
    assert json.loads((killed / CLAIM_FILE).read_text())["pid"] == os.getpid()
    assert (killed / "evaluate.log").read_text() == "the killed run's log\n"
    with_results = tmp_path / "with_results"
    (with_results / "checkpoints").mkdir(parents=True)
    (with_results / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (with_results / CLAIM_FILE).write_text(json.dumps({**record, "what": "training run"}))
    with pytest.raises(ConfigError, match=r"holds what a training run left when its process \(pid \d+ on .*\) ended "
                                          r"without finishing \(checkpoints\).*resume it with ckpt_path=.*last\.ckpt"):
        claim(with_results)
    live = tmp_path / "live"
    live.mkdir()
    (live / CLAIM_FILE).write_text(json.dumps({**record, "pid": os.getppid(), "started": None}))
    with pytest.raises(ConfigError, match=r"is in use by another command \(evaluation, pid \d+"):
        claim(live)


def test_the_retry_after_a_sigkill_takes_the_directory_over(slow_ckpt, tmp_path):
    """evaluate.py killed (SIGKILL) while it computes the bound: the same command again runs in that directory."""
    out = tmp_path / "eval"
    args = [sys.executable, "evaluate.py", f"ckpt_path={slow_ckpt}", f"hydra.run.dir={out}", "progress=false"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(out / ".hydra" / "config.yaml", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    assert (out / CLAIM_FILE).is_file() and not (out / "eval.json").exists()
    retry = subprocess.run([*args, "limit=8"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert retry.returncode == 0, retry.stderr
    assert (out / "eval.json").is_file()
