"""DDP failure paths with 2 CPU processes (gloo), each under a timeout: they must end, not hang (issue 8)."""

from __future__ import annotations

import csv
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


NONFINITE_SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from dpm.module import DiffusionModule
    from dpm.run import train
    from tests.conftest import compose

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
def test_multirun_with_ddp_leaves_one_sweep_directory(tmp_path):
    sweep = tmp_path / "sweep"
    out = subprocess.run([sys.executable, "train.py", "-m", "seed=0,1", *DDP, "trainer.max_steps=4", "test_at_end=false",
                          f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert sorted(p.name for p in (sweep / job).iterdir() if p.is_dir()) == [".hydra", "checkpoints", "logs"]
