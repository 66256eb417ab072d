"""Which weights a run reports: the best validation checkpoint (test_weights=best) at the end of training and in
evaluate.py's default, said in eval.json with its step; overfitting said when val/K keeps falling; early stopping
through Lightning's EarlyStopping. Each checked against the run's own record of val/K (its metrics.csv)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from dpm.app.compose import compose
from dpm.app.evaluate import evaluate
from dpm.app.train import train
from dpm.errors import ConfigError
from dpm.model.callbacks import OverfittingMonitor

# 8 training points and a high learning rate: val/K rises, then falls as the model learns the points themselves
TINY = ["dataset=array", "dataset.n_val=20", "dataset.n_test=20", "dataset.batch_size=64", "T=10", "net.hidden=64",
        "optimizer.lr=0.02", "lr_scheduler=none", "t_sampling=uniform", "trainer.max_steps=240",
        "trainer.val_check_interval=20", "trainer.max_epochs=-1", "trainer.check_val_every_n_epoch=null",
        "trainer.enable_progress_bar=false",
        "latest_link=null", "progress=false"]


def tiny_file(tmp_path: Path) -> Path:
    x = np.random.default_rng(0).multivariate_normal([0.0, 3.0], [[1.0, 0.9], [0.9, 1.0]], 48)
    np.save(tmp_path / "tiny.npy", x)
    return tmp_path / "tiny.npy"


def validations(run: Path) -> list[tuple[int, float]]:
    """(global step, val/K) of every validation, from the CSV logger (it writes global_step - 1)."""
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return [(int(r["step"]) + 1, float(r["val/K"])) for r in csv.DictReader(f) if r.get("val/K")]


def wine_file(tmp_path: Path) -> Path:
    """scikit-learn's wine table (178 x 13) as a user would save it: 142 rows to train on overfit within a few
    hundred steps."""
    from sklearn.datasets import load_wine

    np.save(tmp_path / "wine.npy", load_wine().data)
    return tmp_path / "wine.npy"


def test_the_best_validation_weights_are_reported_evaluated_and_overfitting_said(tmp_path):
    train(compose(["dataset=array", f"dataset.path={wine_file(tmp_path)}", "T=10", "optimizer.lr=0.003",
                   "lr_scheduler=none", "trainer.max_steps=1200", "trainer.val_check_interval=100",
                   "trainer.max_epochs=-1", "trainer.check_val_every_n_epoch=null", "callbacks=minimal",
                   "trainer.enable_progress_bar=false", "latest_link=null", "progress=false"]), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    history = validations(tmp_path / "run")
    best_step, best_K = max(history, key=lambda sk: sk[1])
    assert saved["weights_chosen"] == "best validation" and saved["weights_step"] == best_step
    assert saved["weights_val_K"] == pytest.approx(best_K, rel=1e-6)
    assert Path(saved["checkpoint"]).name.startswith(f"best-step{best_step:07d}")
    # the record of val/K and the overfitting verdict, recounted from the CSV
    after = [K for _, K in history][[s for s, _ in history].index(best_step):]
    falls = streak = 0  # the longest run of falls after the best
    for before, now in zip(after, after[1:]):
        streak = streak + 1 if now < before else 0
        falls = max(falls, streak)
    assert (saved["val_K_best_step"], saved["val_K_last_step"]) == (best_step, history[-1][0])
    assert saved["val_K_falls"] == falls and saved["overfitting"] == (falls >= 3)
    assert best_step < 1200 and saved["overfitting"]  # this run does overfit: the best is not the last

    # evaluate.py on last.ckpt: by default the weights the run reports, the same K; ckpt_choice=given: the last ones
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    chosen = evaluate(compose([f"ckpt_path={last}", "progress=false"], "evaluate"), tmp_path / "ev_run")
    again = json.loads((tmp_path / "ev_run" / "eval.json").read_text())
    assert again["K"] == pytest.approx(saved["K"], abs=1e-9) and again["weights_step"] == best_step
    assert chosen["checkpoint"] == saved["checkpoint"]
    evaluate(compose([f"ckpt_path={last}", "ckpt_choice=given", "progress=false"], "evaluate"), tmp_path / "ev_last")
    given = json.loads((tmp_path / "ev_last" / "eval.json").read_text())
    assert given["weights_step"] == 1200 and given["weights_chosen"] == "given" and given["K"] != saved["K"]

    # the run moved elsewhere: the best checkpoint is found beside last.ckpt; removed, the refusal says what to do
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)
    evaluate(compose([f"ckpt_path={moved / 'checkpoints' / 'last.ckpt'}", "progress=false"], "evaluate"),
             tmp_path / "ev_moved")
    assert json.loads((tmp_path / "ev_moved" / "eval.json").read_text())["K"] == pytest.approx(saved["K"], abs=1e-9)
    for best in (moved / "checkpoints").glob("best-*.ckpt"):
        best.unlink()
    with pytest.raises(ConfigError, match="ckpt_choice=given"):
        evaluate(compose([f"ckpt_path={moved / 'checkpoints' / 'last.ckpt'}", "progress=false"], "evaluate"),
                 tmp_path / "ev_missing")


def test_early_stopping_ends_the_run_at_the_first_validation_without_a_new_best(tmp_path):
    path = tiny_file(tmp_path)
    train(compose([*TINY, f"dataset.path={path}", "callbacks=[minimal,early_stop]",
                   "callbacks.early_stop.patience=1"]), tmp_path / "run")
    history = validations(tmp_path / "run")
    best, stop = -float("inf"), None
    for step, K in history:  # Lightning's rule with patience 1, min_delta 0: stop at the first non-improvement
        if K > best:
            best = K
        else:
            stop = step
            break
    assert stop is not None and stop < 240  # this run does stop early
    assert history[-1][0] == stop
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["weights_val_K"] == pytest.approx(best, rel=1e-6)


def test_last_weights_when_the_run_says_so():
    cfg = compose(["test_weights=worst"])
    from dpm.app.checks import check_train_config

    with pytest.raises(ConfigError, match="test_weights='worst' is invalid"):
        check_train_config(cfg)


def test_the_overfitting_count_needs_falls_in_a_row_below_the_best():
    monitor = OverfittingMonitor(patience=3)
    for step, K in enumerate([-33.0, -75.0, -156.0, -262.0], 1):  # every validation lower than the one before
        monitor.history.append((step, K))
    assert monitor.summary()["overfitting"] and monitor.falls() == 3
    monitor.history = [(1, -5.0), (2, -4.0), (3, -4.5), (4, -4.2), (5, -4.6), (6, -4.9)]  # noisy: 2 falls at most
    assert monitor.falls() == 2 and not monitor.summary()["overfitting"]
    monitor.history += [(7, -5.0), (8, -4.95)]  # a third fall in a row: overfitting, and it stays said
    assert monitor.falls() == 3 and monitor.summary()["overfitting"]
    monitor.history.append((9, -3.0))  # a new best starts the count again
    assert monitor.falls() == 0
    with pytest.raises(ValueError, match="patience"):
        OverfittingMonitor(patience=0)


def test_dataset_array_budget_is_in_epochs_with_the_learning_rate_decaying_over_them(tmp_path):
    """dataset=array's budget: max_epochs passes over the data (one batch each here) end the run before max_steps;
    lr_scheduler=cosine_run spans exactly them (total_steps filled in by the module)."""
    path = tiny_file(tmp_path)
    train(compose(["dataset=array", f"dataset.path={path}", "dataset.n_val=20", "dataset.n_test=20", "T=10",
                   "lr_scheduler=cosine_run",
                   "trainer.max_epochs=12", "trainer.max_steps=1000", "trainer.check_val_every_n_epoch=4",
                   "trainer.log_every_n_steps=1", "optimizer.lr=0.01", "trainer.enable_progress_bar=false",
                   "latest_link=null", "progress=false"]), tmp_path / "run")
    with open(tmp_path / "run" / "logs" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lr = {int(r["step"]): float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")}
    assert max(lr) == 11 and [s for s, _ in validations(tmp_path / "run")] == [4, 8, 12]  # 12 steps, 3 validations
    # cosine from 0.01 to 1 % of it over the 12 steps: step k has 0.01 (0.01 + 0.99 (1 + cos(pi k / 12)) / 2)
    for k, value in lr.items():
        assert value == pytest.approx(0.01 * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * k / 12))), rel=1e-6)


def test_plateau_cuts_the_learning_rate_as_its_rule_says_from_the_logged_validations(tmp_path):
    """lr_scheduler=plateau: after each validation, more than `patience` validations without a new best val/K cut
    the learning rate by `factor`; recomputed here from metrics.csv's val/K and compared with the logged lr."""
    path = tiny_file(tmp_path)
    train(compose(["dataset=array", f"dataset.path={path}", "dataset.n_val=20", "dataset.n_test=20", "T=10",
                   "lr_scheduler=plateau", "lr_scheduler.patience=1", "lr_scheduler.factor=0.5", "optimizer.lr=0.02",
                   "trainer.max_epochs=60", "trainer.check_val_every_n_epoch=2", "trainer.log_every_n_steps=1",
                   "trainer.enable_progress_bar=false", "latest_link=null", "progress=false"]), tmp_path / "run")
    with open(tmp_path / "run" / "logs" / "metrics.csv", newline="") as f:
        lr = {int(r["step"]): float(r["lr-Adam"]) for r in csv.DictReader(f) if r.get("lr-Adam")}
    rate, best, bad, cuts = 0.02, -float("inf"), 0, 0
    for step, K in validations(tmp_path / "run")[:-1]:  # the last one ends the run: no step follows it
        if K > best:
            best, bad = K, 0
        else:
            bad += 1
        if bad > 1:
            rate, bad, cuts = rate * 0.5, 0, cuts + 1
        assert lr[step] == pytest.approx(rate, rel=1e-9), step  # the rate of the step after the validation
    assert cuts >= 1
