"""train.py and evaluate.py as a user runs them, in subprocesses, with tiny budgets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
        "dataset.n_train=128", "dataset.n_val=32", "dataset.n_test=32", "dataset.batch_size=32", "T=6",
        "latest_link=null"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """python train.py with a tiny budget, once for this file: (run directory, the completed process)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    train = run("train.py", *TINY, f"hydra.run.dir={out}")
    assert train.returncode == 0, train.stderr[-3000:]
    return out, train


def test_train_then_evaluate(trained, tmp_path):
    run_dir, train = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (run_dir / "samples.png").is_file()
    assert f"next:          python evaluate.py ckpt_path={ckpt}" in train.stdout
    assert any(line.startswith("test bound:") and line.endswith(", exact estimator)") for line in train.stdout.splitlines())
    ev = run("evaluate.py", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["dataset"] == "swiss_roll" and result["estimator"] == "exact" and result["n_examples"] == 32
    assert "2.350" in ev.stdout  # the paper's Table 1 value printed beside ours


@pytest.mark.slow
@pytest.mark.timeout(900)  # four jobs, one after another
def test_multirun_sweep_over_schedules(tmp_path):
    sweep = run("train.py", "-m", "schedule=sd2015,linear,cosine,learned", *TINY, f"hydra.sweep.dir={tmp_path}")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    for job in range(4):
        assert (tmp_path / str(job) / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wandb_logger_offline(tmp_path):
    import os

    env = {**os.environ, "WANDB_MODE": "offline"}
    out = subprocess.run([sys.executable, "train.py", "logger=wandb", *TINY, f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_wandb_without_credentials_logs_offline_with_a_note(tmp_path):
    """A real W&B (no mock), on a machine without a W&B login: no API key, and a HOME without ~/.netrc or W&B
    settings. The run goes offline with one note instead of a traceback after its directory was made."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "NETRC"))}
    env.update(HOME=str(home), WANDB_API_KEY="", XDG_CONFIG_HOME=str(home / ".config"))
    out = subprocess.run([sys.executable, "train.py", "logger=wandb", *TINY, f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    notes = [line for line in out.stderr.splitlines() if line.startswith("note: W&B has no credentials here")]
    assert len(notes) == 1 and "Traceback" not in out.stderr
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    assert "offline: true" in (tmp_path / "run" / "config.yaml").read_text()  # what ran is what is recorded


def test_evaluate_of_short_work_shows_no_progress_and_says_where_it_wrote(trained):
    """stdout is a pipe here. A bound that ends within a few seconds shows neither an estimate nor progress lines
    (dpm.io.progress.QUIET_S; tests/test_progress.py has the lines of longer work); the final paths are printed
    once, and by default the evaluation goes into the run's eval/ folder."""
    run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ev = run("evaluate.py", f"ckpt_path={ckpt}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    lines = ev.stdout.splitlines()
    assert not any(line.startswith("exact bound") for line in lines), ev.stdout
    assert "\r" not in ev.stdout
    written = [line for line in lines if line.startswith("wrote ")]
    assert len(written) == 1 and written[0].endswith("eval.json")
    eval_json = Path(written[0].removeprefix("wrote "))
    assert eval_json.is_file() and eval_json.parent.parent == run_dir / "eval"  # not over the run's files


@pytest.mark.slow
def test_evaluate_without_progress_is_quiet(trained):
    ckpt = trained[0] / "checkpoints" / "last.ckpt"
    quiet = run("evaluate.py", f"ckpt_path={ckpt}", "progress=false")
    assert quiet.returncode == 0 and "term/s" not in quiet.stdout and "about" not in quiet.stdout
    assert any(line.startswith("wrote ") for line in quiet.stdout.splitlines())
