"""DDP with 2 CPU processes (gloo), each run under a timeout: failure paths that must end, not hang; the same K,
val/K and weights on 1 and 2 processes (keyed draws, shards gathered by example index)."""

from __future__ import annotations

import csv
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

ROOT = Path(__file__).resolve().parents[1]
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.enable_progress_bar=false",
       "dataset.n_train=256", "dataset.n_val=32", "dataset.n_test=32", "dataset.batch_size=32", "T=6",
       "trainer.val_check_interval=2", "latest_link=null", "progress=false", "callbacks.figure.every_n_val=0"]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_sigterm_under_ddp_writes_last_ckpt_and_exits_143(tmp_path):
    proc = subprocess.Popen([sys.executable, "train.py", *DDP, "trainer.max_steps=100000", f"hydra.run.dir={tmp_path}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        last = tmp_path / "checkpoints" / "last.ckpt"
        deadline = time.time() + 240
        while not last.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)  # to rank 0, as a scheduler would
        _, err = proc.communicate(timeout=120)
    finally:
        _kill_group(proc)
    assert proc.returncode == 143, err[-3000:]
    step = torch.load(last, weights_only=True)["global_step"]
    assert "stopped by SIGTERM at step" in err and f"holds step {step}" in err
    assert "Traceback" not in err and len(err.splitlines()) < 30, err[-3000:]  # rank 1 stops with a line, too


@pytest.mark.slow
def test_sigterm_to_rank_0_of_evaluate_on_2_processes_stops_rank_1_too(tmp_path):
    from tests.helpers import save_untrained

    ckpt = save_untrained(tmp_path / "roll.ckpt", ["T=40", "dataset.n_test=200000", "callbacks=minimal"])
    proc = subprocess.Popen([sys.executable, "evaluate.py", f"ckpt_path={ckpt}", "devices=2", "accelerator=cpu",
                             "batch_size=2", f"hydra.run.dir={tmp_path / 'eval'}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        while line and "exact bound" not in line:  # the bound has started on both processes
            line = proc.stdout.readline()
        assert line, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        deadline = time.time() + 30
        while time.time() < deadline:  # the whole session (rank 1 included) ends with rank 0
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            pytest.fail("rank 1 is still running after rank 0 ended")
    finally:
        _kill_group(proc)
    assert proc.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err, err[-3000:]
    assert not (tmp_path / "eval").exists()


NONFINITE_SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from dpm.model.module import DiffusionModule
    from dpm.app.train import train
    from dpm.app.compose import compose

    plain = DiffusionModule.training_step

    def faulty(self, x0, batch_idx):
        """A non-finite loss on rank 1 only, at steps 2, 3 and 4."""
        loss = plain(self, x0, batch_idx)
        return loss * float("inf") if self.global_rank == 1 and 2 <= self.global_step < 5 else loss

    DiffusionModule.training_step = faulty
    train(compose({overrides!r}), Path(sys.argv[1]))
''')


@pytest.mark.slow
def test_nonfinite_loss_on_one_rank_is_skipped_on_every_rank(tmp_path):
    script = tmp_path / "faulty_train.py"
    overrides = [a for a in DDP if not a.startswith(("latest_link", "progress"))] + [
        "trainer.max_steps=8", "test_at_end=false", "trainer.log_every_n_steps=1"]
    script.write_text(NONFINITE_SCRIPT.format(root=str(ROOT), overrides=overrides))
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")))
    skipped = [float(r["train/nonfinite_skipped"]) for r in rows if r.get("train/nonfinite_skipped")]
    assert max(skipped) == 3.0  # steps 2, 3, 4 skipped (on both ranks: the run did not hang)
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_multirun_with_ddp_leaves_one_sweep_directory(tmp_path):
    sweep = tmp_path / "sweep"
    out = subprocess.run([sys.executable, "train.py", "-m", "seed=0,1", *DDP, "trainer.max_steps=4", "test_at_end=false",
                          f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert sorted(p.name for p in (sweep / job).iterdir() if p.is_dir()) == [".hydra", "checkpoints", "logs"]


# ---- the same numbers on any number of processes (keyed draws, no padding, gathered by index) ----------------
@pytest.fixture(scope="module")
def roll_ckpt(tmp_path_factory):
    """A Swiss roll model after a few steps (one process): its K is what the processes must agree on."""
    from dpm.app.train import train
    from dpm.app.compose import compose

    out = tmp_path_factory.mktemp("roll")
    train(compose(["trainer.max_steps=30", "trainer.val_check_interval=30", "dataset.n_train=512",
                   "dataset.n_val=101", "dataset.n_test=101", "dataset.batch_size=64", "T=12", "callbacks=minimal",
                   "logger=none", "test_at_end=false", "trainer.enable_progress_bar=false"]), out)
    return out / "checkpoints" / "last.ckpt"


def _evaluate_in_process(ckpt: Path, out: Path, *args: str) -> dict:
    from dpm.app.evaluate import evaluate
    from dpm.app.compose import compose

    return evaluate(compose([f"ckpt_path={ckpt}", "progress=false", *args], config_name="evaluate"), out)


@pytest.mark.parametrize("estimator", ["exact", pytest.param("mc", marks=pytest.mark.slow)])
def test_evaluate_gives_the_same_K_on_1_and_2_processes_and_any_batch_size(roll_ckpt, tmp_path, estimator):
    """101 test examples (an odd count: the shards differ in size) on 1 process with batches of 1000 and 7, and
    on 2 gloo processes with a global batch of 16 (evaluate.py devices=2): K to 1e-6 relative, every example
    counted once, for each estimator."""
    args = (f"estimator={estimator}", "n_t=3")
    runs = {name: _evaluate_in_process(roll_ckpt, tmp_path / f"{estimator}-{name}", *args, f"batch_size={b}")
            for name, b in (("1x1000", 1000), ("1x7", 7))}
    proc = subprocess.run([sys.executable, "evaluate.py", f"ckpt_path={roll_ckpt}", "progress=false", *args,
                           "devices=2", "accelerator=cpu", "batch_size=16",
                           f"hydra.run.dir={tmp_path / estimator}-2x16"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs["2x16"] = json.loads((tmp_path / f"{estimator}-2x16" / "eval.json").read_text())
    assert runs["2x16"]["processes"] == 2
    for name, run in runs.items():
        assert run["n_examples"] == 101, name
        for key in ("K", "K_stderr", "L_null", "K_minus_L_null"):
            assert run[key] == pytest.approx(runs["1x1000"][key], rel=1e-6, abs=1e-9), (estimator, name, key)


VALIDATE_SCRIPT = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {root!r})
    from tests.test_ddp import validate

    json.dump(validate(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])), open(sys.argv[4], "w"))
''')


def validate(ckpt: str, devices: int, batch: int) -> dict:
    """val/K of a checkpoint through Lightning's validation loop on `devices` CPU processes (rank 0's metrics)."""
    import lightning as L
    from omegaconf import OmegaConf

    from dpm.app.build import restore
    from dpm.app.checkpoint import load_checkpoint
    from dpm.app.trainer import trainer_settings

    dm, module, _ = restore(load_checkpoint(ckpt), "raw")
    dm.eval_batch_size = batch
    trainer_cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": devices,
                                                "strategy": "ddp" if devices > 1 else "auto"}})
    trainer = L.Trainer(accelerator="cpu", devices=devices, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, **trainer_settings(trainer_cfg))
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    return {k: float(v) for k, v in metrics.items()}


@pytest.mark.slow
def test_val_K_is_the_same_on_1_and_2_processes_and_any_batch_size(roll_ckpt, tmp_path):
    got = {(1, batch): validate(str(roll_ckpt), 1, batch) for batch in (1000, 7)}
    script, out = tmp_path / "validate.py", tmp_path / "2x16.json"
    script.write_text(VALIDATE_SCRIPT.format(root=str(ROOT)))
    proc = subprocess.run([sys.executable, str(script), str(roll_ckpt), "2", "16", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got[(2, 16)] = json.loads(out.read_text())
    for key in ("val/K", "val/K_minus_L_null"):
        for run, metrics in got.items():
            assert metrics[key] == pytest.approx(got[(1, 1000)][key], rel=1e-6), (run, key)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resume_on_2_ranks_reproduces_the_uninterrupted_run(tmp_path):
    """8 steps on 2 gloo processes == 5 steps (stopped mid-epoch) + 3 resumed, weights bit for bit: each rank's
    keyed draws and its data shard continue where they stopped."""
    args = [a for a in DDP if not a.startswith(("trainer.val_check_interval", "callbacks."))] + [
        "trainer.val_check_interval=2", "test_at_end=false", "callbacks=minimal", "logger=none"]

    def train(out: Path, *extra: str) -> Path:
        proc = subprocess.run([sys.executable, "train.py", *args, f"hydra.run.dir={out}", *extra], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return out / "checkpoints" / "last.ckpt"

    straight = train(tmp_path / "straight", "trainer.max_steps=8")
    first = train(tmp_path / "first", "trainer.max_steps=5")
    resumed = train(tmp_path / "resumed", "trainer.max_steps=8", f"ckpt_path={first}")
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_evaluate_multirun_on_2_processes_leaves_one_sweep_directory(roll_ckpt, tmp_path):
    sweep = tmp_path / "sweep"
    out = subprocess.run([sys.executable, "evaluate.py", "-m", f"ckpt_path={roll_ckpt}", "limit=40,50", "devices=2",
                          "accelerator=cpu", "progress=false", f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for job, n in (("0", 40), ("1", 50)):
        result = json.loads((sweep / job / "eval.json").read_text())
        assert result["n_examples"] == n and result["processes"] == 2
