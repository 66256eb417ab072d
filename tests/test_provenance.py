"""Where a number came from (dpm.tasks.provenance): every eval.json records the checkpoint's sha256, step and
weights, the data's identity, the versions, the device and the exact command line; evaluate.py reads a user's data
where the command line says (the data having moved), says what it reads, and tells a changed file from the one the
model was trained on."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import lightning
import numpy as np
import pytest
import sklearn
import torch

from dpm.data.array import ArrayDataModule
from dpm.data.folder import FolderDataModule

ROOT = Path(__file__).resolve().parents[1]
TINY = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
        "dataset.n_train=128", "dataset.n_val=32", "dataset.n_test=32", "dataset.batch_size=32", "T=6",
        "latest_link=null", "progress=false"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_eval_json_records_where_its_number_came_from(tmp_path):
    args = ["train.py", *TINY, "test_exact_max_T=2", "test_n_t=3", f"hydra.run.dir={tmp_path / 'run'}"]
    out = run(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    test_line = next(line for line in out.stdout.splitlines() if line.startswith("test bound:"))
    assert test_line.endswith(", mc estimator)")  # above test_exact_max_T the end of training says it used mc
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["estimator"] == "mc"
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    ckpt = Path(result["checkpoint"])  # the weights reported (test_weights=best: the best validation checkpoint)
    assert ckpt.parent == tmp_path / "run" / "checkpoints" and ckpt.is_file()
    own = result["provenance"]
    assert own["checkpoint"] == {"path": str(ckpt), "sha256": sha256(ckpt), "weights": "raw",
                                 "step": torch.load(ckpt, weights_only=True)["global_step"]}
    assert own["data"] == {"name": "swiss_roll", "version": f"scikit-learn {sklearn.__version__}"}
    assert own["dpm"] == version("dpm") and own["torch"] == torch.__version__
    assert own["lightning"] == lightning.__version__ and own["device"].startswith("cpu (")
    assert shlex.split(own["command"])[1:] == args and own["cwd"] == str(ROOT)  # exactly as typed
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert own["dpm_commit"] == head.stdout.strip() and isinstance(own["dpm_uncommitted_changes"], bool)
    ev = run("evaluate.py", f"ckpt_path={ckpt.parent / 'last.ckpt'}", "progress=false", f"hydra.run.dir={tmp_path / 'eval'}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    again = json.loads((tmp_path / "eval" / "eval.json").read_text())["provenance"]
    assert again["checkpoint"] == own["checkpoint"]
    assert again["data"] == {**own["data"], "same_as_training": True}
    assert "evaluate.py" in again["command"] and f"ckpt_path={ckpt.parent / 'last.ckpt'}" in shlex.split(again["command"])
    assert "data: SwissRollDataModule, generated or shipped with a package" in ev.stdout


def test_a_users_file_and_folder_are_identified_by_their_contents(tmp_path):
    from PIL import Image

    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(40, 3)))
    assert ArrayDataModule(path=str(tmp_path / "v.npy")).identity() == {
        "name": "array", "sha256": sha256(tmp_path / "v.npy"), "files": 1}  # what `sha256sum v.npy` prints
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i, where in enumerate(["a.png", "sub/b.png", "c.png"]):
        Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(folder / where)
    (folder / "notes.txt").write_text("not an image: not data")
    lines = sorted(f"{sha256(folder / w)}  {w}\n" for w in ["a.png", "sub/b.png", "c.png"])
    expected = hashlib.sha256("".join(lines).encode()).hexdigest()  # sha256sum of each image, sorted, hashed
    assert FolderDataModule(path=str(folder)).identity() == {"name": "folder", "sha256": expected, "files": 3}
    moved = folder.rename(tmp_path / "moved")
    assert FolderDataModule(path=str(moved)).identity()["sha256"] == expected  # contents, not location


@pytest.fixture(scope="module")
def array_run(tmp_path_factory):
    """A model trained on a user's array file: (folder, checkpoint)."""
    tmp = tmp_path_factory.mktemp("array_run")
    np.save(tmp / "points.npy", np.random.default_rng(0).normal(1.0, 2.0, size=(200, 3)))
    out = run("train.py", "dataset=array", f"dataset.path={tmp / 'points.npy'}", "dataset.batch_size=32",
              "callbacks=minimal", *[a for a in TINY if not a.startswith("dataset.")],
              f"hydra.run.dir={tmp / 'run'}")
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, tmp / "run" / "checkpoints" / "last.ckpt"


def test_evaluate_reads_a_moved_file_from_path_and_says_what_it_reads(array_run, tmp_path):
    from dpm.app.evaluate import data_choices, evaluate
    from dpm.app.compose import compose
    from dpm.errors import ConfigError

    folder, ckpt = array_run
    moved = tmp_path / "elsewhere.npy"
    moved.write_bytes((folder / "points.npy").read_bytes())
    ev = run("evaluate.py", f"ckpt_path={ckpt}", f"path={moved}", "progress=false", f"hydra.run.dir={tmp_path / 'e'}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert f"data: ArrayDataModule read from path={moved} (given)" in ev.stdout
    result = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert result["path"] == str(moved) and result["provenance"]["data"]["same_as_training"] is True
    assert result["provenance"]["data"]["sha256"] == sha256(moved)
    config = torch.load(ckpt, weights_only=True)["dpm_config"]
    line = data_choices(config, compose([f"ckpt_path={ckpt}"], config_name="evaluate"))
    assert line == f"data: ArrayDataModule read from path={folder / 'points.npy'} (the checkpoint’s; path=... to change)"
    for wrong in ("data_dir=/tmp", "+dataset.path=/x.npy", "folder=/tmp"):  # keys this data set does not read
        with pytest.raises(ConfigError, match=r"path="):  # ... refused, saying which key it does read
            evaluate(compose([f"ckpt_path={ckpt}", wrong], config_name="evaluate"), tmp_path / "r")
        assert not (tmp_path / "r").exists()


def test_a_file_changed_after_training_is_evaluated_with_a_note_and_a_new_shape_refused(array_run, tmp_path):
    folder, ckpt = array_run
    changed = tmp_path / "changed.npy"
    np.save(changed, np.load(folder / "points.npy") * 3.0)
    ev = run("evaluate.py", f"ckpt_path={ckpt}", f"path={changed}", "progress=false", f"hydra.run.dir={tmp_path / 'e'}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert f"note: dataset.path={changed} is not the data the model was trained on" in ev.stdout
    data = json.loads((tmp_path / "e" / "eval.json").read_text())["provenance"]["data"]
    assert data["same_as_training"] is False and data["sha256"] == sha256(changed)
    assert data["at_training"]["sha256"] == sha256(folder / "points.npy")
    wider = tmp_path / "wider.npy"
    np.save(wider, np.random.default_rng(1).normal(size=(200, 4)))
    refused = run("evaluate.py", f"ckpt_path={ckpt}", f"path={wider}", f"hydra.run.dir={tmp_path / 'w'}")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "holds examples of shape (4,), but the model was trained on examples of shape (3,)" in refused.stderr
    assert not (tmp_path / "w").exists()
