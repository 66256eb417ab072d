"""A user's own data: dataset=array (.npy, .npz, .csv, .pt) and dataset=folder (PNG, JPEG), written here with numpy
and PIL; every bad input refused with one message naming the file; figures and K_raw for data dpm knows nothing of."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dpm.app.build import build
from dpm.app.compose import compose
from dpm.app.evaluate import evaluate
from dpm.app.resume import check_resume
from dpm.app.rundir import holds_results
from dpm.app.train import train
from dpm.data.array import ArrayDataModule
from dpm.data.folder import FolderDataModule
from dpm.data.images import ImageDataModule
from dpm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
         "latest_link=null", "progress=false", "T=10"]
MEAN, COV = np.array([1.0, -2.0]), np.array([[2.0, 0.8], [0.8, 1.0]])


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def write_images(folder: Path, n: int, size=(8, 8), mode: str = "L", suffix: str = ".png", seed: int = 0) -> Path:
    """n random images of `size` (w, h) in `mode` under folder; smooth enough that JPEG keeps them near."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) + (() if mode == "L" else (3,))
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"im{i:03d}{suffix}")
    return folder


def ready(dm):
    dm.setup()
    return dm


# ---- reading: what each file gives -----------------------------------------------------------------------
def test_array_kinds_shapes_and_normalisation(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "v.npy", rng.normal(3.0, 2.0, (200, 3)))
    np.save(tmp_path / "b.npy", (rng.random((200, 12)) < 0.3).astype(np.int64))
    np.save(tmp_path / "im.npy", rng.integers(0, 256, (60, 6, 6), dtype=np.uint8))
    vectors = ready(ArrayDataModule(path=str(tmp_path / "v.npy")))
    assert vectors.data_shape == (3,) and vectors.kind.figure == "pairs" and vectors.kind.unit == "bits"
    assert not isinstance(vectors, ImageDataModule)  # no pixel machinery for vectors
    assert {k: len(v) for k, v in vectors.splits.items()} == {"train": 160, "val": 20, "test": 20}
    assert abs(vectors.splits["train"].mean().item()) < 1e-5 and abs(vectors.splits["train"].var().item() - 1) < 0.02
    binary = ready(ArrayDataModule(path=str(tmp_path / "b.npy")))
    assert binary.kind.data == "sequence" and binary.kind.unit == "bits/seq" and binary.scale == 1.0
    assert binary.kind.classes == 2 and vectors.kind.classes is None
    # only images are dequantised, by the training step's one draw as by dequantize: vectors and bits stay as given
    assert vectors.kind.dequantization_width == 0 and binary.kind.dequantization_width == 0
    x = vectors.splits["train"][:4]
    assert torch.equal(vectors.dequantize(x, generator=torch.Generator().manual_seed(0)), x)
    images = ready(ArrayDataModule(path=str(tmp_path / "im.npy"), n_levels=256))
    assert images.data_shape == (1, 6, 6) and images.kind.data == "image" and images.kind.units_per_example == 36
    assert images.kind.dequantization_width == pytest.approx(images.bin_width / images.scale)  # one bin, normalised
    # the file's units: x = (v - shift) / scale with v the uint8 values
    info = images.eval_info()
    raw = torch.from_numpy(np.load(tmp_path / "im.npy").astype(np.float64))
    assert 0 < info["scale"] and abs(info["shift"] - 127.5) < 10
    assert images.raw_log2_jacobian() == pytest.approx(math.log2(info["scale"]))  # one channel: per pixel
    # one bin is one unit of the file's values, so the 8-bit NLL at K = 0 is the log-Jacobian itself
    assert float(raw.min()) == 0 and images.nll_bits_per_dim_8bit(0.0) == pytest.approx(math.log2(info["scale"]))


def test_splits_from_the_file_and_every_format(tmp_path):
    rng = np.random.default_rng(1)
    train, val, test = rng.normal(size=(50, 2)), rng.normal(size=(7, 2)), rng.normal(size=(9, 2))
    np.savez(tmp_path / "s.npz", train=train, val=val, test=test)
    dm = ready(ArrayDataModule(path=str(tmp_path / "s.npz")))
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 50, "val": 7, "test": 9}
    assert torch.allclose(dm.denormalize(dm.splits["test"]).double(), torch.from_numpy(test), atol=1e-5)
    np.savetxt(tmp_path / "t.csv", train, delimiter=",", header="a,b", comments="")
    torch.save(torch.from_numpy(train), tmp_path / "t.pt")
    np.savez(tmp_path / "one.npz", anything=train)
    for name in ("t.csv", "t.pt", "one.npz"):
        dm = ready(ArrayDataModule(path=str(tmp_path / name), n_val=5, n_test=5))
        assert len(dm.splits["train"]) == 40 and dm.data_shape == (2,), name


def test_folder_splits_channels_and_resizing(tmp_path):
    for split, n in (("train", 12), ("test", 4)):
        write_images(tmp_path / "split" / split, n, mode="RGB", seed=len(split))
    dm = ready(FolderDataModule(path=str(tmp_path / "split"), n_val=3))
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 9, "val": 3, "test": 4}
    assert dm.data_shape == (3, 8, 8) and dm.kind.data == "image"
    grey = ready(FolderDataModule(path=str(tmp_path / "split"), channels=1, image_size=4))
    assert grey.data_shape == (1, 4, 4)
    write_images(tmp_path / "mixed", 4, size=(10, 6), seed=3)
    write_images(tmp_path / "mixed" / "deeper", 4, size=(8, 8), mode="RGB", seed=4)
    dm = ready(FolderDataModule(path=str(tmp_path / "mixed"), channels=3, image_size=6, n_val=2, n_test=2))
    assert dm.data_shape == (3, 6, 6) and len(dm.splits["train"]) == 4
    # decoded through PIL: the levels are the file's
    one = write_images(tmp_path / "exact", 6, seed=5)
    dm = ready(FolderDataModule(path=str(one), n_val=2, n_test=2))
    files = sorted(one.glob("*.png"))
    pixels = {tuple(np.asarray(Image.open(f)).ravel()) for f in files}
    got = {tuple(np.round(dm.denormalize(x).numpy() * 255).astype(np.uint8).ravel()) for s in dm.splits.values()
           for x in s}
    assert got == pixels


def test_resume_may_move_the_data_but_not_change_them(tmp_path):
    old = {"dataset": {"_target_": "dpm.data.array.ArrayDataModule", "path": "/a.npy", "n_val": None},
           "diffusion": {"p": 0.3}}
    moved = {**old, "dataset": {**old["dataset"], "path": "/b.npy"}, "diffusion": {"p": None}}
    assert check_resume(old, moved, "x.ckpt") == [("dataset.path", "/a.npy", "/b.npy")]
    with pytest.raises(ConfigError, match="dataset.n_val"):
        check_resume(old, {**old, "dataset": {**old["dataset"], "n_val": 5}}, "x.ckpt")


# ---- bad input: one message naming the file --------------------------------------------------------------
def _nan(p):
    a = np.ones((20, 3))
    a[4, 1], a[7, 2] = np.nan, np.inf
    np.save(p / "nan.npy", a)
    return ArrayDataModule, {"path": p / "nan.npy"}


def _truncated(p):
    folder = write_images(p / "cut", 6)
    data = (folder / "im002.png").read_bytes()
    (folder / "im002.png").write_bytes(data[: len(data) // 2])
    return FolderDataModule, {"path": folder}


def _save(name, fn):
    def make(p):
        fn(p / name)
        return ArrayDataModule, {"path": p / name}
    return make


BAD = [
    ("missing file", lambda p: (ArrayDataModule, {"path": p / "nope.npy"}), r"nope.npy does not exist"),
    ("missing folder", lambda p: (FolderDataModule, {"path": p / "nodir"}), r"nodir does not exist"),
    ("no path", lambda p: (ArrayDataModule, {"path": None}), r"dataset.path is required"),
    ("empty folder", lambda p: ((p / "empty").mkdir(), (FolderDataModule, {"path": p / "empty"}))[1],
     r"empty holds nothing"),
    ("no images", lambda p: ((p / "txt").mkdir(), (p / "txt" / "a.txt").write_text("x"),
                             (FolderDataModule, {"path": p / "txt"}))[2], r"txt holds no image files, only \['a.txt'\]"),
    ("truncated image", _truncated, r"im002.png .*is not a readable image"),
    ("mixed sizes", lambda p: (write_images(p / "ms", 3, size=(8, 8)), write_images(p / "ms" / "b", 3, size=(9, 7)),
                               (FolderDataModule, {"path": p / "ms"}))[2], r"ms holds images of 2 sizes.*image_size"),
    ("mixed grey and colour", lambda p: (write_images(p / "mc", 3), write_images(p / "mc" / "c", 3, mode="RGB"),
                                         (FolderDataModule, {"path": p / "mc"}))[2],
     r"mc mixes grey images .*dataset.channels=1"),
    ("NaN and inf", _nan, r"nan.npy holds 2 NaN or infinite values \(the first at index \(4, 1\)\)"),
    ("object array", _save("obj.npy", lambda f: np.save(f, np.array([[1, "a"]], dtype=object), allow_pickle=True)),
     r"obj.npy could not be read .*Pickled objects are never loaded"),
    ("string array", _save("str.npy", lambda f: np.save(f, np.array([["a", "b"]] * 9))), r"str.npy holds a <U1 array"),
    ("1-D array", _save("flat.npy", lambda f: np.save(f, np.arange(30.0))), r"flat.npy has shape \(30,\).*reshape"),
    ("too few examples", _save("few.npy", lambda f: np.save(f, np.ones((5, 2)))), r"few.npy holds 5 training examples"),
    ("npz without usable keys", _save("k.npz", lambda f: np.savez(f, a=np.ones((9, 2)), b=np.ones((9, 2)))),
     r"k.npz holds the arrays \['a', 'b'\]"),
    (".pt not a tensor", _save("l.pt", lambda f: torch.save([1, 2], f)), r"l.pt holds a list, not a tensor"),
    ("non-numeric csv", _save("bad.csv", lambda f: f.write_text("a,b\n1,2\n3,x\n")), r"bad.csv is not a numeric table"),
]


@pytest.mark.parametrize("name,make,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_the_file(tmp_path, name, make, message):
    cls, kwargs = make(tmp_path)
    with pytest.raises(ConfigError, match=message):
        cls(**{k: None if v is None else str(v) for k, v in kwargs.items()}).setup()


def test_non_binary_values_with_binomial_diffusion_name_the_file(tmp_path):
    np.save(tmp_path / "real.npy", np.random.default_rng(0).normal(size=(50, 4)))
    cfg = compose(["dataset=array", f"dataset.path={tmp_path / 'real.npy'}", "diffusion=binomial",
                   "schedule=binomial"])
    with pytest.raises(ConfigError, match=r"real.npy: binomial diffusion needs binary data"):
        build(cfg)


SUBPROCESS_BAD = ["NaN and inf", "truncated image", "missing folder"]


@pytest.mark.parametrize("name", SUBPROCESS_BAD)
def test_bad_input_exits_2_before_any_run(tmp_path, name):
    _, make, message = next(b for b in BAD if b[0] == name)
    cls, kwargs = make(tmp_path)
    dataset = "array" if cls is ArrayDataModule else "folder"
    out = run("train.py", *QUICK, f"dataset={dataset}", f"dataset.path={kwargs['path']}",
              f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert re.search(message, out.stderr) and "Traceback" not in out.stderr + out.stdout
    assert not holds_results(tmp_path / "run")  # at most Hydra's own log


# ---- training and evaluating on them ---------------------------------------------------------------------
def test_binary_sequences_train_with_binomial_diffusion_and_a_fitted_prior(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "bits.npy", (rng.random((300, 10)) < 0.25).astype(np.uint8))
    cfg = compose(["dataset=array", f"dataset.path={tmp_path / 'bits.npy'}", "diffusion=binomial",
                   "schedule=binomial", "diffusion.p=null", "dataset.batch_size=64", *QUICK])
    result = train(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    train_split = ready(ArrayDataModule(path=str(tmp_path / "bits.npy"))).splits["train"]
    assert config["diffusion"]["p"] == pytest.approx(train_split.mean().item())  # fitted, recorded
    assert saved["diffusion"] == "binomial" and saved["unit"] == "bits/seq" and saved["K_raw"] == saved["K"]
    assert math.isfinite(result["test/K"]) and (tmp_path / "run" / "samples.png").is_file()
    # completion works on them as on the heartbeat: the data module says they are sequences
    ev = compose([f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", "task=complete", "complete.k=4",
                  "complete.n=12", "complete.particles=2", "progress=false"], config_name="evaluate")
    completed = evaluate(ev, tmp_path / "complete")
    arrays = np.load(tmp_path / "complete" / "complete.npz")
    assert completed["known_bins_exact"] is True and np.array_equal(arrays["result"][:, :4], arrays["x0"][:, :4])
    assert set(np.unique(arrays["result"])) <= {0.0, 1.0} and (tmp_path / "complete" / "complete.png").is_file()


def test_vectors_of_three_coordinates_draw_pairwise_scatter_plots(tmp_path):
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(200, 3)))
    cfg = compose(["dataset=array", f"dataset.path={tmp_path / 'v.npy'}", "dataset.batch_size=64", *QUICK])
    train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "samples.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    # K_raw: the normalisation's log-Jacobian, D log2(scale) bits per example, taken off
    assert saved["K_raw"] == pytest.approx(saved["K"] - 3 * math.log2(saved["scale"]))


FOLDERS = [pytest.param("L", ".png", id="grey png"),
           pytest.param("RGB", ".png", id="rgb png", marks=pytest.mark.slow),
           pytest.param("RGB", ".jpg", id="jpeg", marks=pytest.mark.slow)]


@pytest.mark.parametrize("mode,suffix", FOLDERS)
def test_an_image_folder_trains_and_evaluates_end_to_end(tmp_path, mode, suffix):
    folder = write_images(tmp_path / "images", 40, mode=mode, suffix=suffix)
    out = run("train.py", "dataset=folder", f"dataset.path={folder}", "dataset.batch_size=16", *QUICK,
              f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["dataset"] == "folder" and saved["unit"] == "bits/pixel" and saved["channels"] == len(mode)
    assert math.isfinite(saved["K"]) and saved["nll_bits_per_dim_8bit"] > 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = run("evaluate.py", f"ckpt_path={ckpt}", "task=inpaint", "inpaint.n=4", "progress=false",
              f"hydra.run.dir={tmp_path / 'inpaint'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "inpaint" / "inpaint.png").is_file()


def true_log2_likelihood(x: np.ndarray) -> np.ndarray:
    """log2 N(x; MEAN, COV) per row, bits."""
    d = x - MEAN
    quad = np.einsum("ni,ij,nj->n", d, np.linalg.inv(COV), d)
    return (-0.5 * quad - 0.5 * np.log(np.linalg.det(2 * np.pi * COV))) / np.log(2)


@pytest.mark.slow
def test_gaussian_points_K_raw_is_a_bound_within_a_bit_of_the_truth(tmp_path):
    """The CPU default (python train.py dataset=array dataset.path=FILE) on 20,000 draws of a 2-D Gaussian."""
    x = np.random.default_rng(1).multivariate_normal(MEAN, COV, size=20000)
    np.save(tmp_path / "gauss.npy", x)
    out = run("train.py", "dataset=array", f"dataset.path={tmp_path / 'gauss.npy'}", "latest_link=null",
              "progress=false", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}",
              timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    test = ready(ArrayDataModule(path=str(tmp_path / "gauss.npy")))
    truth = true_log2_likelihood(test.denormalize(test.splits["test"]).double().numpy()).mean()
    assert saved["n_examples"] == 2000
    assert truth - 1.0 < saved["K_raw"] < truth, (saved["K_raw"], truth)
