"""Training progress off a terminal: plain lines (dpm.app.lines.LineProgress), no redrawn bar, no library noise; on a
terminal one bar over the run's steps (dpm.app.lines.StepBar)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpm.app.compose import compose
from dpm.app.train import train
from tests.test_faults import TINY

LINE = re.compile(r"^step (\d+)/(\d+) \((\d+) %\)( \| train/loss \S+)?( \| val/K \S+)? \| [\w ]+ elapsed(, [\w ]+ left)?"
                  r"( \((validation|end of training)\))?$")


def test_off_a_terminal_training_logs_plain_lines(tmp_path, capsys):
    """every_s=0: a line after every step, one after each validation (with val/K) and one at the end."""
    args = [a for a in TINY if not a.startswith("trainer.enable_progress_bar")]
    train(compose([*args, "trainer.enable_progress_bar=true", "progress_lines_every_s=0",
                   "trainer.log_every_n_steps=1"]), tmp_path / "run")
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith(("step ", "training from"))]
    assert lines[0] == "training from step 0 to 4 (a line every 0 s and after each validation)"
    parsed = [LINE.match(line) for line in lines[1:]]
    assert all(parsed), lines
    steps = [int(m[1]) for m in parsed if m[8] is None]
    assert steps == [1, 2, 3, 4] and all(m[4] for m in parsed if m[8] is None)  # each with the loss
    validations = [int(m[1]) for m in parsed if m[8] == "validation"]
    assert validations == [2, 4] and all(m[5] for m in parsed if m[8] == "validation")  # with val/K
    assert parsed[-1][8] == "end of training" and parsed[-1][1] == "4"


def test_on_a_terminal_one_bar_counts_the_steps_towards_max_steps(tmp_path, capsys, monkeypatch):
    """30 steps in epochs of 4 batches: the bar reads `training (steps)` up to 30/30, never `Epoch k`, and a warning
    raised meanwhile is written above it rather than into it."""
    import warnings

    from dpm.app.lines import StepBar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # what make_callbacks asks of a terminal
    args = [a for a in TINY if not a.startswith(("trainer.enable_progress_bar", "trainer.max_steps",
                                                  "trainer.val_check_interval"))]

    class Warns(StepBar):
        def on_validation_end(self, trainer, pl_module):
            super().on_validation_end(trainer, pl_module)
            warnings.warn("a warning during training")

    monkeypatch.setattr("dpm.app.trainer.StepBar", Warns)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        train(compose([*args, "trainer.enable_progress_bar=true", "trainer.max_steps=30",
                       "trainer.val_check_interval=15", "dataset.n_train=128", "dataset.batch_size=32",
                       "progress_bar_every=5"]), tmp_path / "run")
    out, err = capsys.readouterr()
    frames = [f for f in out.replace("\r", "\n").splitlines() if f.startswith("training (steps)")]
    assert frames and "30/30" in frames[-1] and all("/30 " in f for f in frames), frames[-3:]
    assert "Epoch" not in out
    assert any(line.endswith("UserWarning: a warning during training") for line in err.splitlines())


@pytest.mark.slow
def test_a_log_file_of_training_is_small_with_a_line_at_least_every_30_s(tmp_path):
    """`python train.py > log 2>&1` (the default Swiss roll, here 1500 steps): a few KB, at most 30 s between
    lines (read as they arrive), no litlogger advertisement, no library deprecation warnings."""
    log = tmp_path / "log"
    proc = subprocess.Popen([sys.executable, "train.py", "trainer.max_steps=1500", f"hydra.run.dir={tmp_path / 'run'}",
                             "latest_link=null"], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
    arrivals, text = [time.monotonic()], b""
    for line in proc.stdout:
        arrivals.append(time.monotonic())
        text += line
    proc.wait()
    log.write_bytes(text)
    assert proc.returncode == 0, text[-3000:]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert len(text) <= 20_000 and b"\r" not in text
    assert max(gaps) <= 30, (max(gaps), text.decode()[-3000:])
    assert b"litlogger" not in text and b"FutureWarning" not in text and b"UserWarning" not in text
