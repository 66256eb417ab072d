"""python -m dpm.report on real (tiny) runs: K from the run's eval, from an eval subdirectory or from metrics.csv;
swept keys as columns; per-group means with paired differences; incomplete runs marked. The failed-run case runs
through a real multirun in test_launchers.py."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import open_dict

from dpm.sweeps.report import main, report
from dpm.sweeps.runs import read_run
from dpm.app.rundir import claim
from dpm.app.evaluate import evaluate
from dpm.app.train import train
from dpm.sweeps.jobs import SweepJobs
from dpm.app.compose import compose
from tests.helpers import hydra_job_config

TINY = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false", "T=6",
        "dataset.n_train=128", "dataset.n_val=32", "dataset.n_test=48", "dataset.batch_size=32", "dataset.noise=0.5",
        "callbacks=minimal", "test_at_end=false"]  # K from an eval subdirectory or metrics.csv, as in older runs
GRID = [("false", 0), ("false", 1), ("true", 0), ("true", 1)]  # schedule.learned x seed


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Runs 0-3: a 2 x 2 sweep trained through dpm.app.train.train (no Hydra, so no overrides.yaml: the report finds
    the differing config values); run 0 evaluated into 0/eval. Run 4: a Hydra job that trained as run 3 did, but whose end was
    never recorded (killed, or still running)."""
    root = tmp_path_factory.mktemp("sweep")
    for i, (learned, seed) in enumerate(GRID):
        train(compose([*TINY, f"schedule.learned={learned}", f"seed={seed}"]), root / str(i))
    evaluate(compose([f"ckpt_path={root / '0' / 'checkpoints' / 'last.ckpt'}"], config_name="evaluate"),
             root / "0" / "eval")
    shutil.copytree(root / "3", root / "4")  # its training as far as it got, without an end (no eval.json)
    (root / "4" / "eval.json").unlink(missing_ok=True)
    metrics = root / "4" / "logs" / "metrics.csv"  # ... which stopped after step 2 of its 4
    with metrics.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["step"] and int(r["step"]) < 2]
    with metrics.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    SweepJobs().on_job_start(hydra_job_config(root / "4", root, 4))  # a job that began writes no record yet
    return root


def val_K(run) -> float:
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return [float(r["val/K"]) for r in csv.DictReader(f) if r.get("val/K")][-1]


def test_table_lists_every_run_with_its_source_and_status(sweep):
    result = report([sweep])
    rows = {r["run"]: r for r in result["rows"]}
    assert list(rows) == ["0", "1", "2", "3", "4"]
    assert result["keys"] == ["seed", "schedule.learned"]
    assert [rows[k]["status"] for k in rows] == ["complete"] * 4 + ["incomplete"]
    assert "no end recorded" in rows["4"]["note"] and not (sweep / "4" / ".hydra" / "job.json").exists()
    ev = json.loads((sweep / "0" / "eval" / "eval.json").read_text())
    assert rows["0"]["K"] == ev["K"] and rows["0"]["K_stderr"] == ev["K_stderr"]
    assert rows["0"]["K_from"] == "test exact (eval/eval.json)"
    assert rows["0"]["gap_to_truth"] == ev["gap_to_truth"] and ev["true_log_likelihood"] < 0  # noisy roll: a truth
    assert rows["1"]["K"] == pytest.approx(val_K(sweep / "1")) and "metrics.csv" in rows["1"]["K_from"]
    assert rows["1"]["unit"] == "bits" and rows["1"]["steps"] == 4
    md = result["files"]["md"].read_text()
    assert "| run | seed | schedule.learned | status |" in md
    assert f"{ev['K']:.3f} ± {ev['K_stderr']:.3f}" in md
    assert "5 runs: 4 complete, 1 incomplete, 0 failed." in md
    # K beside the best baseline of the same examples (contract 12), and which weights
    assert rows["0"]["K_minus_best_baseline"] == ev["K_minus_best_baseline"]
    best = ev["best_baseline"].replace("_", " ")
    assert f"{ev['K_minus_best_baseline']:.3f} ± {ev['K_minus_best_baseline_stderr']:.3f} ({best})" in md
    assert f"{ev['weights_chosen']}: raw, step {ev['weights_step']} (" in md  # the weights column
    with open(result["files"]["csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["status"] for r in table] == ["complete"] * 4 + ["incomplete"]
    assert float(table[0]["gap_to_truth"]) == pytest.approx(ev["gap_to_truth"])
    assert result["files"]["png"].read_bytes()[:4] == b"\x89PNG"


def test_groups_average_over_seeds_and_pair_the_differences(sweep):
    result = report([sweep], sweep / "out")
    K = {i: read_run(sweep / str(i))["K"] for i in range(4)}
    md = result["files"]["md"].read_text()
    fixed, fixed_se = mean_and_stderr_list([K[0], K[1]])
    learned, learned_se = mean_and_stderr_list([K[2], K[3]])
    diff, diff_se = mean_and_stderr_list([K[2] - K[0], K[3] - K[1]])
    assert f"| schedule.learned=false | 2 | {fixed:.3f} ± {fixed_se:.3f} |" in md
    assert f"| schedule.learned=true | 2 | {learned:.3f} ± {learned_se:.3f} |" in md
    assert f"{diff:.3f} ± {diff_se:.3f} | 2 |" in md  # run 4 (incomplete) is left out of the groups


def mean_and_stderr_list(values):
    return float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values)))


def test_a_finished_job_record_marks_the_run_complete_and_its_time(sweep, tmp_path):
    run = tmp_path / "4"
    cfg = hydra_job_config(run, tmp_path, 4)
    jobs = SweepJobs()
    ret = JobReturn()
    ret.status, ret.return_value = JobStatus.COMPLETED, None
    shutil.copytree(sweep / "4", run)
    jobs.on_job_start(cfg)
    jobs.on_job_end(cfg, ret)  # a directory this process did not claim (it may hold another run): no record
    assert not (run / ".hydra" / "job.json").exists()
    shutil.rmtree(run)
    claim(run)  # as dpm.app.train.train does before it writes anything
    shutil.copytree(sweep / "4", run, dirs_exist_ok=True)
    jobs.on_job_start(cfg)
    jobs.on_job_end(cfg, ret)
    row = read_run(run)
    assert row["status"] == "complete" and row["seconds"] is not None and row["seconds"] >= 0


def test_command_line_writes_where_asked_and_refuses_an_empty_directory(sweep, tmp_path, capsys):
    main([str(sweep / "0"), str(sweep / "2"), "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert "| run |" in out and (tmp_path / "r" / "report.png").is_file()
    assert math.isfinite(float(next(csv.DictReader(open(tmp_path / "r" / "report.csv")))["K"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no training runs"):
        report([tmp_path / "empty"])


def test_a_damaged_run_gets_its_own_row_and_the_others_are_reported(sweep, tmp_path):
    """An eval.json that is not an object (a list, or cut short) falls back to the last validation estimate and
    says so; a config.yaml that does not parse is an `unreadable` row; the other runs are reported as usual."""
    for name in ("list", "cut", "broken_config"):
        shutil.copytree(sweep / "1", tmp_path / name)
    (tmp_path / "list" / "eval.json").write_text("[1, 2]\n")
    (tmp_path / "cut" / "eval.json").write_text('{"K": 1.')
    (tmp_path / "broken_config" / "config.yaml").write_text("trainer: [unclosed\n")
    rows = {r["run"]: r for r in report([tmp_path])["rows"]}
    assert sorted(rows) == ["broken_config", "cut", "list"]
    for name in ("list", "cut"):
        assert rows[name]["K_from"] == "last val/K (mc, metrics.csv); eval.json unreadable"
        assert rows[name]["K"] == pytest.approx(val_K(tmp_path / name))
    assert rows["broken_config"]["status"] == "unreadable" and "config.yaml unreadable" in rows["broken_config"]["note"]


def test_a_sweep_job_refused_at_start_is_a_failed_row(tmp_path):
    """A job that failed its config check before claiming its directory (which holds only Hydra's log) gets a
    FAILED record, and the report shows it as failed (not as an incomplete run one could resume)."""
    run = tmp_path / "1"
    run.mkdir()
    (run / "train.log").write_text("")
    cfg = hydra_job_config(run, tmp_path, 1, overrides=["optimizer.lr=-1"])
    with open_dict(cfg):
        cfg.hydra.overrides.task = ["optimizer.lr=-1"]
    jobs = SweepJobs()
    ret = JobReturn()
    ret.status, ret._return_value = JobStatus.FAILED, ValueError("optimizer.lr=-1 is invalid")
    jobs.on_job_start(cfg)
    jobs.on_job_end(cfg, ret)
    row = read_run(run, tmp_path)
    assert row["status"] == "failed" and "optimizer.lr=-1 is invalid" in row["note"]
    assert row["overrides"] == {"optimizer.lr": "-1"}


def test_damaged_metrics_a_link_loop_and_an_unreadable_eval_json_leave_the_report_right(sweep, tmp_path):
    """A metrics.csv that is not CSV text is named in its run's row and the rest reported; a link back up the tree
    counts no run twice; a run whose eval.json cannot be read is `unreadable`, not complete, and its validation K
    stays out of the group means."""
    for i in range(4):
        shutil.copytree(sweep / str(i), tmp_path / "s" / str(i))
    (tmp_path / "s" / "2" / "logs" / "metrics.csv").write_bytes(b"step,val/K\n\xff\xfe\x00garbage,1.0\n")
    (tmp_path / "s" / "0" / "eval" / "eval.json").unlink()
    (tmp_path / "s" / "0" / "eval.json").write_text('{"K": ')  # cut short
    (tmp_path / "s" / "loop").symlink_to(tmp_path / "s")  # a link loop: s/loop/loop/... is s again
    result = report([tmp_path / "s"])
    rows = {r["run"]: r for r in result["rows"]}
    assert sorted(rows) == ["0", "1", "2", "3"]  # each run once
    assert "logs/metrics.csv unreadable (UnicodeDecodeError" in rows["2"]["note"]
    assert rows["2"]["status"] == "incomplete"  # its steps cannot be read, and nothing else says it finished
    assert rows["0"]["status"] == "unreadable" and "eval.json unreadable" in rows["0"]["K_from"]
    md = result["files"]["md"].read_text()
    K1, K3 = rows["1"]["K"], rows["3"]["K"]
    assert f"| schedule.learned=false | 1 | {K1:.3f} |" in md  # run 0's validation K is not averaged in
    assert "4 runs: 2 complete, 1 incomplete, 0 failed, 1 unreadable." in md


def test_report_rows_carry_the_provenance_of_their_eval_json(sweep):
    rows = {r["run"]: r for r in report([sweep])["rows"]}
    ev = json.loads((sweep / "0" / "eval" / "eval.json").read_text())
    p = ev["provenance"]
    assert rows["0"]["checkpoint_sha256"] == p["checkpoint"]["sha256"] and rows["0"]["weights"] == "raw"
    assert rows["0"]["checkpoint_step"] == ev["weights_step"] == p["checkpoint"]["step"] and rows["0"]["data"] == p["data"]["version"]
    assert rows["0"]["command"] == p["command"] and rows["0"]["dpm"] == p["dpm"]
    with open(sweep / "report.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert first["checkpoint_sha256"] == p["checkpoint"]["sha256"] and first["torch"] == p["torch"]
