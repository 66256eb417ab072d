"""Bad input, faults and hostile files through train.py and evaluate.py as a user runs them.

Each case checks the exit code, a short message without a traceback, and that no file that existed before the
command changed: every case through dpm.app.cli.main in-process, a few through a subprocess in the default suite
and all of them under -m slow. HYDRA_FULL_ERROR=1 still gives the traceback.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

# imported here, not inside a test: Lightning's log handler must not hold a test's captured (later closed) stderr
from dpm.app import cli
from dpm.app.compose import compose
from dpm.app.evaluate import evaluate
from dpm.app.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
        "dataset.n_train=128", "dataset.n_val=32", "dataset.n_test=32", "dataset.batch_size=32", "T=6",
        "latest_link=null", "progress=false"]


def run(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root with a hash of its content."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace with one finished tiny run, a junk file, crafted checkpoints and corrupt data files."""
    root = tmp_path_factory.mktemp("faults")
    train(compose(TINY), root / "run")  # train.py itself runs in tests/test_cli.py
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    (root / "junk.ckpt").write_bytes(os.urandom(4096))
    real = torch.load(ckpt, weights_only=True)
    for name, target in (("crafted_path", {"_target_": "pathlib.Path.write_text", "self": str(root / "pwned"),
                                           "data": "owned"}),
                         ("crafted_dpm", {"_target_": "dpm.io.files.write_text", "path": str(root / "pwned"),
                                          "text": "owned"})):
        hostile = dict(real)
        hostile["dpm_config"] = {**real["dpm_config"], "dataset": target}
        torch.save(hostile, root / f"{name}.ckpt")
    torch.save({"state_dict": {}}, root / "foreign.ckpt")  # a checkpoint of another program
    with open(root / "pickle_bomb.ckpt", "wb") as f:  # unpickling it would write a file
        pickle.dump({"dpm_config": {}, "state_dict": Bomb(str(root / "pwned"))}, f)
    cifar = root / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / name).write_bytes(os.urandom(2048))
    bark = root / "bark"
    bark.mkdir()
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(bark / "good.png")
    (bark / "cut.png").write_bytes((bark / "good.png").read_bytes()[:200])
    return root


class Bomb:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "owned"))


def ckpt(ws: Path) -> str:
    return str(ws / "run" / "checkpoints" / "last.ckpt")


# (name, script, arguments given the workspace, exit code, a regex the stderr must match)
CASES = [
    ("T below 2", "train.py", lambda w: ["T=1"], 2, r"T=1 is invalid"),
    ("val_n_t zero", "train.py", lambda w: ["val_n_t=0"], 2, r"val_n_t=0 is invalid"),
    ("negative lr", "train.py", lambda w: ["optimizer.lr=-1"], 2, r"optimizer.lr=-1 is invalid"),
    ("zero lr", "train.py", lambda w: ["optimizer.lr=0"], 2, r"optimizer.lr=0 is invalid"),
    ("beta_1 zero", "train.py", lambda w: ["schedule.beta_1=0"], 2, r"schedule.beta_1=0 is invalid"),
    ("beta_1 one", "train.py", lambda w: ["schedule.beta_1=1"], 2, r"schedule.beta_1=1 is invalid"),
    ("beta_1 large", "train.py", lambda w: ["schedule.beta_1=0.7"], 2, r"nothing can be learned"),
    ("beta_T above one", "train.py", lambda w: ["schedule.beta_T=1.5"], 2, r"schedule.beta_T=1.5 is invalid"),
    ("one training example", "train.py", lambda w: ["dataset.n_train=1"], 2, r"dataset.n_train=1 is invalid"),
    ("max_steps zero", "train.py", lambda w: ["trainer.max_steps=0"], 2, r"trainer.max_steps=0 is invalid"),
    ("val interval zero", "train.py", lambda w: ["trainer.val_check_interval=0"], 2,
     r"trainer.val_check_interval=0 is invalid"),
    ("devices zero", "train.py", lambda w: ["trainer.devices=0"], 2, r"trainer.devices=0 is invalid"),
    ("batch not divisible over devices", "train.py", lambda w: ["trainer.devices=3", "trainer.accelerator=cpu"],
     2, r"must divide evenly over .* 3 processes"),
    ("too little data for devices", "train.py",
     lambda w: ["trainer.devices=2", "trainer.accelerator=cpu", "dataset.n_train=40", "dataset.batch_size=64"], 2,
     r"fewer than its batch"),
    ("leaked key after a group switch", "train.py", lambda w: ["dataset=heartbeat", "diffusion=gaussian"], 2,
     r"diffusion.p is not a setting of diffusion \(GaussianDiffusion\)"),
    ("bark with data_dir", "train.py", lambda w: ["dataset=bark", f"+dataset.data_dir={w}"], 2,
     r"dataset.data_dir=.* is not used by bark: give .* dataset.folder"),
    ("unknown key added", "train.py", lambda w: ["+dataset.nosuchkey=1"], 2, r"dataset.nosuchkey is not a setting"),
    ("missing checkpoint to resume", "train.py", lambda w: [f"ckpt_path={w / 'nope.ckpt'}"], 2, r"is not a file"),
    ("junk checkpoint to resume", "train.py", lambda w: [f"ckpt_path={w / 'junk.ckpt'}"], 2,
     r"could not be read as a checkpoint"),
    ("crafted checkpoint resumed", "train.py", lambda w: [f"ckpt_path={w / 'crafted_path.ckpt'}"], 2,
     r"dataset._target_='pathlib.Path.write_text' .* is refused"),
    ("pickle bomb resumed, env forcing unsafe loads", "train.py", lambda w: [f"ckpt_path={w / 'pickle_bomb.ckpt'}"],
     2, r"could not be read as a checkpoint"),
    ("reused run directory", "train.py", lambda w: [f"hydra.run.dir={w / 'run'}"], 2,
     r"already holds a run .* nothing there is overwritten"),
    ("resume with a changed network", "train.py", lambda w: [f"ckpt_path={ckpt(w)}", "net.hidden=17"], 2,
     r"net.hidden: 128 in the checkpoint, 17 now"),
    ("resume with a changed schedule", "train.py", lambda w: [f"ckpt_path={ckpt(w)}", "schedule.beta_1=1e-3"], 2,
     r"schedule.beta_1: 1e-05 in the checkpoint, 0.001 now"),
    ("resume with a changed T", "train.py", lambda w: [f"ckpt_path={ckpt(w)}", "T=7"], 2, r"T: 6 in the checkpoint"),
    ("resume with nothing left to do", "train.py", lambda w: [f"ckpt_path={ckpt(w)}"], 1,
     r"ended after 0 optimizer steps"),
    ("non-finite training", "train.py", lambda w: ["optimizer.lr=1e30", "trainer.max_steps=60"], 1,
     r"non-finite .* in a row"),
    ("corrupt CIFAR-10 batch", "train.py",
     lambda w: ["dataset=cifar10", f"dataset.data_dir={w / 'cifar'}", "dataset.download=false"], 2,
     r"data_batch_1 is not a readable CIFAR-10 batch file"),
    ("truncated bark image", "train.py", lambda w: ["dataset=bark", f"dataset.folder={w / 'bark'}"], 2,
     r"cut.png .* is not a readable image"),
    ("evaluate without checkpoint", "evaluate.py", lambda w: [], 2, r"ckpt_path is required"),
    ("evaluate a crafted checkpoint", "evaluate.py", lambda w: [f"ckpt_path={w / 'crafted_path.ckpt'}"], 2,
     r"is refused: dataset may only name classes under \['dpm.data.'\]"),
    ("evaluate a checkpoint naming a dpm function", "evaluate.py", lambda w: [f"ckpt_path={w / 'crafted_dpm.ckpt'}"],
     2, r"dpm.io.files.write_text' .* is refused"),
    ("evaluate a pickle bomb", "evaluate.py", lambda w: [f"ckpt_path={w / 'pickle_bomb.ckpt'}"], 2,
     r"could not be read as a checkpoint"),
    ("evaluate limit zero", "evaluate.py", lambda w: [f"ckpt_path={ckpt(w)}", "limit=0"], 2, r"limit=0 is invalid"),
    ("evaluate limit negative", "evaluate.py", lambda w: [f"ckpt_path={ckpt(w)}", "limit=-1"], 2,
     r"limit=-1 is invalid"),
    ("evaluate batch size zero", "evaluate.py", lambda w: [f"ckpt_path={ckpt(w)}", "batch_size=0"], 2,
     r"batch_size=0 is invalid"),
    ("evaluate unknown estimator", "evaluate.py", lambda w: [f"ckpt_path={ckpt(w)}", "estimator=foo"], 2,
     r"estimator='foo' is unknown"),
    ("evaluate n_t zero", "evaluate.py", lambda w: [f"ckpt_path={ckpt(w)}", "estimator=mc", "n_t=0"], 2,
     r"n_t=0 is invalid"),
    ("evaluate EMA weights that are not there", "evaluate.py", lambda w: [f"ckpt_path={ckpt(w)}", "weights=ema"], 2,
     r"no EMA weights"),
    ("evaluate on zero devices", "evaluate.py", lambda w: [f"ckpt_path={ckpt(w)}", "devices=0"], 2,
     r"devices=0 is invalid"),
    ("evaluate a figure on 2 processes", "evaluate.py", lambda w: [f"ckpt_path={ckpt(w)}", "devices=2", "task=sample"],
     2, r"devices=2 applies to task=bound"),
    ("evaluate with one device and 2 processes", "evaluate.py",
     lambda w: [f"ckpt_path={ckpt(w)}", "devices=2", "device=cpu"], 2, r"with devices=2 choose the kind with accelerator"),
    ("evaluate into the run's own directory", "evaluate.py",
     lambda w: [f"ckpt_path={ckpt(w)}", f"hydra.run.dir={w / 'run'}"], 2, r"already holds a run"),
]
if not torch.cuda.is_available():
    CASES.append(("evaluate on a missing GPU", "evaluate.py", lambda w: [f"ckpt_path={ckpt(w)}", "device=cuda"], 2,
                  r"no CUDA device is available"))
    CASES.append(("evaluate on 2 missing GPUs", "evaluate.py",
                  lambda w: [f"ckpt_path={ckpt(w)}", "devices=2", "accelerator=gpu"], 2, r"devices=2 accelerator=gpu"))


CASES += [
    ("evaluate a missing checkpoint", "evaluate.py", lambda w: [f"ckpt_path={w / 'nope.ckpt'}"], 2,
     r"ckpt_path=.*nope.ckpt"),
    ("evaluate a junk checkpoint", "evaluate.py", lambda w: [f"ckpt_path={w / 'junk.ckpt'}"], 2,
     r"could not be read as a checkpoint"),
    ("evaluate a checkpoint of another program", "evaluate.py", lambda w: [f"ckpt_path={w / 'foreign.ckpt'}"], 2,
     r"not a dpm checkpoint"),
]
# One subprocess each for a refused checkpoint (train.py and evaluate.py) in the default suite; the other cases run
# through dpm.app.cli.main in-process below (the same code after Hydra's composition), by subprocess under -m slow.
SUBPROCESS_BY_DEFAULT = {"pickle bomb resumed, env forcing unsafe loads", "evaluate a crafted checkpoint"}
NO_WEIGHTS_ONLY = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # must not lift the checkpoint's weights_only=True


def case_overrides(ws: Path, name: str, script: str, args, runs: str = "new") -> list[str]:
    """The case's command line: the tiny budget, its own arguments, and a fresh run directory under ws/runs unless
    it names one."""
    import re

    extra = args(ws)
    given_dir = any(a.startswith("hydra.run.dir=") for a in extra)
    out_dir = [] if given_dir else [f"hydra.run.dir={ws / runs / re.sub(r'[^A-Za-z0-9]+', '_', name)}"]
    return [*(TINY if script == "train.py" else ["progress=false"]), *extra, *out_dir]


def assert_refused_cleanly(ws: Path, before: dict, code: int, message: str, got: int, stdout: str, stderr: str):
    import re

    assert got == code, (got, stderr[-3000:])
    assert re.search(message, stderr, re.S), stderr[-3000:]
    assert "Traceback" not in stderr + stdout, stderr[-3000:]
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1 and "Could not" in stderr or (len(error_lines) == 1 and len(error_lines[0]) < 1200)
    after = snapshot(ws)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that existed changed
    assert not (ws / "pwned").exists()


CONFIG_ERRORS = [  # Hydra's own composition errors, and dpm's checks of a composed config
    ("unknown group option", "train.py", ["dataset=nosuchdata"],
     r"^error: dataset=nosuchdata is not an option of the config group dataset; valid choices: \[.*'swiss_roll'\]$"),
    ("unknown diffusion", "train.py", ["diffusion=nosuch"],
     r"^error: diffusion=nosuch is not an option of the config group diffusion; valid choices: \['binomial', "
     r"'categorical', 'gaussian'\]$"),
    ("unknown key", "train.py", ["dataset.batch_sise=1"], r"Could not override 'dataset.batch_sise'"),
    ("bad type", "train.py", ["T=abc"], r"error: T='abc' is invalid: it must be an integer"),
    ("bad value", "train.py", ["dataset.batch_size=0"], r"error: dataset.batch_size=0 is invalid"),
    ("unknown task", "evaluate.py", ["ckpt_path=x", "task=nosuch"],
     r"^error: task=nosuch is not an option of the config group task; valid choices: \[.*'inpaint'"),
]


@pytest.mark.parametrize("script,args,message", [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
def test_a_configuration_error_exits_2_with_one_short_message(tmp_path, script, args, message):
    """Exit 2 for any bad setting, whether Hydra finds it while composing (it would exit 1: dpm.app.cli.run_app)
    or dpm's checks do; the message names the key (and Hydra's lists the valid options), no traceback, nothing
    written but Hydra's log."""
    import re

    out = run(script, *args, f"hydra.run.dir={tmp_path / 'out'}", "progress=false")
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert re.search(message, out.stderr, re.S | re.M), out.stderr[-3000:]
    assert "Traceback" not in out.stderr + out.stdout and len(out.stderr) < 1500, out.stderr
    said = [line for line in out.stderr.splitlines() if line.strip() and "srun" not in line]  # Lightning's SLURM hint
    assert len(said) == 1 and said[0].startswith("error: "), said  # one line: no search path, no hint
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.suffix != ".log"]  # Hydra's log
    assert not written, written


@pytest.mark.parametrize("name,script,args,code,message",
                         [pytest.param(*c, marks=() if c[0] in SUBPROCESS_BY_DEFAULT
                                       else pytest.mark.slow) for c in CASES], ids=[c[0] for c in CASES])
def test_fault(ws, name, script, args, code, message):
    before = snapshot(ws)
    out = run(script, *case_overrides(ws, name, script, args), env=NO_WEIGHTS_ONLY)
    assert_refused_cleanly(ws, before, code, message, out.returncode, out.stdout, out.stderr)


def cli_in_process(script: str, overrides: list[str], monkeypatch) -> int:
    """What `python SCRIPT OVERRIDES` does after Hydra has composed the config (its run_job: the hydra node set
    aside, the output directory from hydra.run.dir), then dpm.app.cli.main; returns the exit code."""
    name = script.removesuffix(".py")
    cfg = compose(overrides, config_name=name, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(cfg.hydra.run.dir)
    monkeypatch.setenv(cli.JOB_OVERRIDES_ENV, "[]")  # main sets it for DDP children: restored afterwards
    sigterm = signal.getsignal(signal.SIGTERM)
    HydraConfig.instance().set_config(cfg)
    job = cfg.copy()
    with open_dict(job):
        del job["hydra"]
    try:
        cli.main(train if name == "train" else evaluate, job, name)
    except SystemExit as exit_:
        return exit_.code
    finally:
        HydraConfig.instance().cfg = None
        signal.signal(signal.SIGTERM, sigterm)
    return 0


IN_PROCESS = CASES  # Hydra's own composition errors: test_a_configuration_error_exits_2_with_one_short_message
SLOW_IN_PROCESS = {"non-finite training"}  # ~25 steps; tests/test_run.py stops a non-finite run in the default suite


@pytest.mark.parametrize("name,script,args,code,message",
                         [pytest.param(*c, marks=pytest.mark.slow if c[0] in SLOW_IN_PROCESS else ())
                          for c in IN_PROCESS], ids=[c[0] for c in IN_PROCESS])
def test_fault_in_process(ws, name, script, args, code, message, monkeypatch, capsys):
    """Each case through dpm.app.cli.main in this process: the exit code, one short message, no file changed."""
    for key, value in NO_WEIGHTS_ONLY.items():
        monkeypatch.setenv(key, value)
    before = snapshot(ws)
    got = cli_in_process(script, case_overrides(ws, name, script, args, "in_process"), monkeypatch)
    out = capsys.readouterr()
    assert_refused_cleanly(ws, before, code, message, got, out.out, out.err)


def test_full_traceback_on_request(ws, monkeypatch):
    """HYDRA_FULL_ERROR=1: the error goes on to Hydra, which prints its traceback, instead of becoming exit 2."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="T=1 is invalid"):
        cli_in_process("train.py", [*TINY, "T=1", f"hydra.run.dir={ws / 'new' / 'full'}"], monkeypatch)


def test_resume_applies_a_changed_learning_rate(ws, tmp_path):
    train(compose([*TINY, "trainer.max_steps=6", "optimizer.lr=0.002", f"ckpt_path={ckpt(ws)}"]), tmp_path / "resumed")
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 6
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == 0.002  # applied, not just recorded
    assert saved["optimizer_states"][0]["state"]  # Adam's moments came along
    config = yaml.safe_load((tmp_path / "resumed" / "config.yaml").read_text())
    assert config["optimizer"]["lr"] == 0.002 and config["changed_on_resume"]["optimizer.lr"] == 0.002
    assert config["resumed_from"] == ckpt(ws) and config["trainer"]["max_steps"] == 6


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_writes_last_ckpt_and_exits_nonzero(tmp_path, sig, code):
    args = [a for a in TINY if not a.startswith("trainer.max_steps")] + ["trainer.max_steps=1000000"]
    proc = subprocess.Popen([sys.executable, "train.py", *args, f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "checkpoints" / "last.ckpt", proc)
        time.sleep(0.5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:  # a run the signal did not stop would train a million steps after the test
        proc.kill()
    assert proc.returncode == code, err[-3000:]
    assert f"stopped by {sig.name}" in err and "resume with: python train.py ckpt_path=" in err
    step = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert f"holds step {step}" in err


@pytest.mark.slow
def test_interrupted_evaluation_writes_nothing(tmp_path):
    out = run("train.py", *TINY, "dataset.n_test=3000", "test_at_end=false", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stderr[-3000:]
    proc = subprocess.Popen([sys.executable, "evaluate.py", f"ckpt_path={tmp_path / 'run/checkpoints/last.ckpt'}",
                             "batch_size=1", f"hydra.run.dir={tmp_path / 'eval'}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    while line and "exact bound" not in line:  # the time estimate: the bound has started
        line = proc.stdout.readline()
    assert "exact bound: 3,000 examples" in line, line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "stopped by SIGINT before it wrote its results" in err, err[-2000:]
    assert not (tmp_path / "eval").exists()  # nothing left: the same directory can be used again


def test_sigterm_stops_a_long_figure_within_seconds(tmp_path):
    """T = 200,000: the validation figure samples 2,000 points through 200,000 steps (minutes). It shows its
    progress, and SIGTERM stops it within seconds (exit 143, last.ckpt written), not once the figure is drawn."""
    args = [a for a in TINY if not a.startswith(("T=", "progress"))] + ["T=200000", "progress=true", "test_at_end=false"]
    proc = subprocess.Popen([sys.executable, "train.py", *args, f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        while line and not line.startswith("sampling:"):  # the figure's progress, once it has run a few seconds
            line = proc.stdout.readline()
        assert line.startswith("sampling:") and "/200k" in line, line
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - start
    finally:
        proc.kill()  # nothing left running, whatever happened (the figure alone would take many minutes)
    assert took < 15, took
    assert proc.returncode == 143 and "stopped by SIGTERM" in err, err[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


BUG_SCRIPT = """
import runpy
import sys

sys.path.insert(0, {root!r})
from dpm.model.module import DiffusionModule

plain = DiffusionModule.training_step


def buggy(self, batch, batch_idx):
    if self.global_step == 3:
        raise ValueError("a bug in the code, not a setting")
    return plain(self, batch, batch_idx)


DiffusionModule.training_step = buggy
runpy.run_path({train!r}, run_name="__main__")
"""


def test_a_value_error_from_a_bug_mid_training_is_a_failure_not_a_setting(tmp_path):
    """Only a ConfigError (a setting, file or checkpoint that cannot be used) exits 2. A ValueError raised by a bug
    after training began exits 1 with its traceback, and the run directory keeps what the run wrote."""
    script = tmp_path / "buggy_train.py"
    script.write_text(BUG_SCRIPT.format(root=str(ROOT), train=str(ROOT / "train.py")))
    args = [a for a in TINY if not a.startswith("trainer.max_steps")] + ["trainer.max_steps=6"]
    out = subprocess.run([sys.executable, str(script), *args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
    assert "Traceback" in out.stderr and "ValueError: a bug in the code, not a setting" in out.stderr
    assert "error: a bug in the code" not in out.stderr  # not reported as a bad setting
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert (tmp_path / "run" / "checkpoints" / "crash.ckpt").is_file()


@pytest.mark.slow
def test_a_sweep_job_refused_for_a_setting_is_one_line_and_the_others_run(tmp_path):
    out = run("train.py", "-m", "optimizer.lr=-1,0.001", *TINY, "callbacks=minimal", "test_at_end=false",
              f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "error: optimizer.lr=-1 is invalid: it must be a finite number > 0" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: a job of the sweep was refused (optimizer.lr=-1")
    assert (tmp_path / "1" / "checkpoints" / "last.ckpt").is_file()  # the other job ran


def test_out_of_memory_in_training_is_one_message_and_no_crash_checkpoint(tmp_path):
    """A batch whose activations need about 100 GB, under an address-space limit of 12 GB (so the allocation fails
    at once, as it would on a machine without the memory): exit 1, one line that says what ran out and what to
    lower, no traceback, and no crash.ckpt (last.ckpt, when there is one, is the run's)."""
    import resource

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (12 * 2**30, 12 * 2**30))

    args = [a for a in TINY if not a.startswith(("dataset.n_train", "dataset.batch_size"))]
    out = subprocess.run([sys.executable, "train.py", *args, "net.hidden=131072", "net.n_layers=1",
                          "dataset.n_train=200000", "dataset.batch_size=200000", f"hydra.run.dir={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, preexec_fn=limit_memory)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: out of memory in training at step 0 (") and "dataset.batch_size" in line, line
    assert not (tmp_path / "checkpoints" / "crash.ckpt").exists()


@pytest.mark.slow
def test_out_of_memory_in_smc_is_a_clean_refusal_or_one_message(tmp_path):
    """task=complete with 100,000 particles per sequence (about 6 GB of particles) under an address-space limit of
    8 GB: refused before it starts when this machine cannot hold it (exit 2), else stopped when the allocation fails
    (exit 1); either way one line naming complete.particles, no traceback, no results."""
    import resource

    from tests.helpers import save_untrained

    ckpt = save_untrained(tmp_path / "hb.ckpt", ["dataset=heartbeat", "T=10", "dataset.n_train=100",
                                                 "dataset.n_val=20", "dataset.n_test=200"])

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))

    out = subprocess.run([sys.executable, "evaluate.py", f"ckpt_path={ckpt}", "task=complete", "complete.n=100",
                          "complete.particles=100000", "batch_size=100000", "progress=false",
                          f"hydra.run.dir={tmp_path / 'eval'}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, preexec_fn=limit_memory)
    assert out.returncode in (1, 2) and "Traceback" not in out.stderr, out.stderr[-3000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "complete.particles=100000" in line, line
    assert not (tmp_path / "eval" / "complete.json").exists()
