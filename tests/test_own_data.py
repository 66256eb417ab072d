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


def header_only_png(path: Path, width: int, height: int) -> None:
    """A grey PNG whose header claims width x height pixels, with almost no pixel data (what a decompression bomb's
    header looks like to a reader: PIL decides from the header alone)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _bomb(p):
    folder = write_images(p / "bomb", 59, size=(16, 16))
    header_only_png(folder / "huge.png", 20000, 20000)
    return FolderDataModule, {"path": folder}


def _too_big_to_decode(p):
    folder = p / "big"
    folder.mkdir()
    for i in range(400):  # 400 images of 9000 x 9000 (each under PIL's bomb limit): terabytes once decoded
        header_only_png(folder / f"im{i:03d}.png", 9000, 9000)
    return FolderDataModule, {"path": folder}


def _fifo(p):
    import os

    os.mkfifo(p / "pipe.npy")
    return ArrayDataModule, {"path": p / "pipe.npy"}


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
    ("too few examples", _save("few.npy", lambda f: np.save(f, np.arange(10.0).reshape(5, 2))), r"few.npy holds 5 training examples"),
    ("npz without usable keys", _save("k.npz", lambda f: np.savez(f, a=np.ones((9, 2)), b=np.ones((9, 2)))),
     r"k.npz holds the arrays \['a', 'b'\]"),
    (".pt not a tensor", _save("l.pt", lambda f: torch.save([1, 2], f)), r"l.pt holds a list, not a tensor"),
    ("non-numeric csv", _save("bad.csv", lambda f: f.write_text("a,b\n1,2\n3,x\n")), r"bad.csv is not a numeric table"),
    ("a FIFO", _fifo, r"pipe.npy is not a regular file"),
    ("text named .npy", _save("t.npy", lambda f: f.write_text("1,2\n3,4\n")),
     r"t.npy is not a .npy file \(it does not start as a NumPy array file does; its first bytes are b'1,2\\n3,'\)"),
    ("beyond float32", _save("big.npy", lambda f: np.save(f, np.array([[1.0, 2.0]] * 20 + [[3.0, 1e39]]))),
     r"big.npy holds 1 values beyond float32's range \(±3.4e\+38; the first, 1e\+39, at index \(20, 1\)\)"),
    ("uint8 images without n_levels", _save("u8.npy", lambda f: np.save(f, np.full((30, 5, 5), 200, np.uint8))),
     r"u8.npy holds images of integer values \(uint8, 0..200\) and dataset.n_levels is null: set dataset.n_levels=256"),
    ("constant ones", _save("ones.npy", lambda f: np.save(f, np.ones((40, 5)))),
     r"ones.npy: the training examples are all the same \(every value 1\)"),
    ("decompression bomb", _bomb, r"huge.png \(under dataset.path\) is too large to decode \(Image size \(400000000 "
                                  r"pixels\) exceeds limit"),
    ("too large to decode", _too_big_to_decode, r"big: its 400 images of 1x9000x9000 would need about [\d,.]+ GiB of "
                                                r"memory once decoded, more than the [\d,.]+ GiB available"),
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


def test_zero_one_sequences_with_gaussian_diffusion_are_refused(tmp_path):
    np.save(tmp_path / "bits.npy", (np.random.default_rng(0).random((60, 8)) < 0.4).astype(np.uint8))
    with pytest.raises(ConfigError, match=r"bits.npy: the data are sequences of 0 / 1 values: model them with "
                                          r"diffusion=binomial schedule=binomial"):
        build(compose(["dataset=array", f"dataset.path={tmp_path / 'bits.npy'}"]))


def test_images_with_an_alpha_channel_are_read_with_a_note(tmp_path, capsys):
    folder = write_images(tmp_path / "rgba", 12, mode="RGB")
    Image.fromarray(np.full((8, 8, 4), 99, np.uint8), "RGBA").save(folder / "z.png")
    dm = ready(FolderDataModule(path=str(folder)))
    assert dm.data_shape == (3, 8, 8)
    assert f"note: 1 of the 13 images under dataset.path={folder} have an alpha channel (e.g. {folder / 'z.png'}, " \
           "mode RGBA); it is dropped (RGB is read)" in capsys.readouterr().err


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
    # K_raw: the normalisation's log-Jacobian, sum_d log2(scale_d) bits per example (one scale per column), taken off
    assert saved["scaling"] == "column" and len(saved["scale"]) == 3
    assert saved["K_raw"] == pytest.approx(saved["K"] - sum(math.log2(s) for s in saved["scale"]))


# ---- scaling real vectors -------------------------------------------------------------------------------------
def correlated_columns(n: int = 500) -> np.ndarray:
    """Three correlated columns in units a thousand-fold apart, as real tables have."""
    z = np.random.default_rng(7).normal(size=(n, 3))
    return np.stack([1000 * z[:, 0] + 50, 0.5 * z[:, 0] + 0.2 * z[:, 1], 0.01 * (z[:, 1] - z[:, 2])], 1)


@pytest.mark.parametrize("scaling", ["column", "global", "whiten"])
def test_scaling_and_its_log_jacobian_against_autograd(tmp_path, scaling):
    raw = correlated_columns()
    np.save(tmp_path / "v.npy", raw)
    dm = ready(ArrayDataModule(path=str(tmp_path / "v.npy"), scaling=scaling))
    x = dm.splits["train"].double()
    cov = torch.cov(x.T, correction=0)
    if scaling == "column":
        assert torch.allclose(cov.diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-4)
    elif scaling == "whiten":
        assert torch.allclose(cov, torch.eye(3, dtype=torch.float64), atol=1e-4)
    else:  # the paper's Swiss roll: one scalar, unit variance on average over the coordinates
        assert cov.diagonal().mean().item() == pytest.approx(1.0, abs=1e-4) and cov[0, 0] > 100 * cov[2, 2]
    # the map back to the file's values, and |det| of its Jacobian by autograd (independent of the closed form)
    assert torch.allclose(dm.denormalize(x), dm.load()["train"].double(), rtol=1e-5, atol=1e-3)
    jac = torch.autograd.functional.jacobian(lambda v: dm.denormalize(v[None])[0], x[0])
    assert dm.raw_log2_jacobian() == pytest.approx(torch.linalg.slogdet(jac)[1].item() / math.log(2), abs=1e-6)
    assert dm.eval_info()["scaling"] == scaling


def test_a_constant_column_is_refused_by_name(tmp_path):
    x = correlated_columns()
    x = np.insert(x, 2, 7.5, axis=1)  # column 2 constant
    np.save(tmp_path / "c.npy", x)
    with pytest.raises(ConfigError, match=r"column 2 .*constant.*7\.5"):
        ready(ArrayDataModule(path=str(tmp_path / "c.npy")))
    np.save(tmp_path / "d.npy", np.concatenate([x[:, :2], x[:, :1] + x[:, 1:2]], 1))  # the third the sum of two
    with pytest.raises(ConfigError, match="linearly dependent"):
        ready(ArrayDataModule(path=str(tmp_path / "d.npy"), scaling="whiten"))
    assert ready(ArrayDataModule(path=str(tmp_path / "d.npy"))).data_shape == (3,)  # per column: fine


def test_a_checkpoint_of_the_one_scale_default_still_reads_as_global(tmp_path):
    np.save(tmp_path / "v.npy", correlated_columns())
    dm = ArrayDataModule(path=str(tmp_path / "v.npy"))  # its config, from an earlier version, has no scaling key
    dm.load_state_dict({"shift": torch.zeros(3), "scale": 2.0})
    dm.setup()
    assert dm.eval_info()["scaling"] == "global" and dm.raw_log2_jacobian() == pytest.approx(3.0)


def test_pairwise_figure_is_in_the_datas_own_units_with_shared_axes(tmp_path, monkeypatch):
    from matplotlib.collections import PathCollection

    from dpm.figures.pairs import pairs

    x = np.random.default_rng(0).normal([100.0, -50.0, 3.0], [5.0, 1.0, 0.1], size=(200, 3))
    np.save(tmp_path / "v.npy", x)
    dm, module = build(compose(["dataset=array", f"dataset.path={tmp_path / 'v.npy'}", "T=6", "progress=false"]))
    figures = []
    module_of_pairs = sys.modules[pairs.__module__]  # the package re-exports the function under the module's name
    monkeypatch.setattr(module_of_pairs, "save", lambda fig, path: figures.append(fig) or path)
    pairs(module.eval(), dm, tmp_path / "p.png")
    axes = np.array(figures[0].axes).reshape(3, 3)
    data = next(c for c in axes[1, 0].collections if isinstance(c, PathCollection)).get_offsets()
    nearest = np.abs(np.asarray(data)[:, None, :] - x[None, :, :2]).max(2).min(1)  # to the closest row of the file
    assert len(data) == 20 and nearest.max() < 1e-3  # the file's values (to float32), not normalised ones
    for j in range(3):  # a column shares its x range, a row (off the diagonal) its y range
        assert len({axes[i, j].get_xlim() for i in range(3)}) == 1
        assert len({axes[j, i].get_ylim() for i in range(3) if i != j}) == 1
    assert axes[0, 0].get_xlim()[0] < 100 < axes[0, 0].get_xlim()[1] and axes[1, 1].get_xlim()[1] < 0


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
    wrote = [line for line in out.stdout.splitlines() if "wrote" in line]
    for name in ("inpaint.json", "inpaint.png", "inpaint.npz"):  # each file named once, in the last lines
        assert sum(name in line for line in wrote) == 1, wrote


def true_log2_likelihood(x: np.ndarray) -> np.ndarray:
    """log2 N(x; MEAN, COV) per row, bits."""
    d = x - MEAN
    quad = np.einsum("ni,ij,nj->n", d, np.linalg.inv(COV), d)
    return (-0.5 * quad - 0.5 * np.log(np.linalg.det(2 * np.pi * COV))) / np.log(2)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_gaussian_points_K_raw_is_within_a_tenth_of_a_bit_of_the_truth(tmp_path):
    """The own-data default (python train.py dataset=array dataset.path=FILE) on 20,000 draws of a 2-D Gaussian:
    K_raw is within 0.1 bits of the true log-likelihood of the same test points and not above it beyond its noise
    (scripts/own_data_measure.py measures this and the other sets to a few hundredths)."""
    x = np.random.default_rng(1).multivariate_normal(MEAN, COV, size=20000)
    np.save(tmp_path / "gauss.npy", x)
    out = run("train.py", "dataset=array", f"dataset.path={tmp_path / 'gauss.npy'}", "latest_link=null",
              "progress=false", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}",
              timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    test = ready(ArrayDataModule(path=str(tmp_path / "gauss.npy")))
    truth = true_log2_likelihood(test.denormalize(test.splits["test"]).double().numpy()).mean()
    assert saved["n_examples"] == 2000 and saved["scaling"] == "column"
    assert truth - 0.1 < saved["K_raw"] < truth + 3 * saved["K_raw_stderr"], (saved["K_raw"], truth)
    assert saved["K_minus_best_baseline"] > -0.1  # the Gaussian baseline is the truth's form
