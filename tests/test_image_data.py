"""Image data sets: each loader reads tiny files written in its real on-disk format (MNIST idx, CIFAR-10's
Python-2 pickled batches, a folder of images), the generated sets match known statistics, and the
8-bit NLL conversion matches discrete likelihoods computed directly. No network access."""

from __future__ import annotations

import gzip
import json
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpm.app.compose import compose
from dpm.data.bark import BarkDataModule
from dpm.data.cifar10 import CIFAR10DataModule
from dpm.data.dead_leaves import DeadLeavesDataModule, dead_leaves
from dpm.data.digits import DigitsDataModule
from dpm.data.images import ImageDataModule, disjoint_subsets
from dpm.data.mnist import MNISTDataModule



# ---- writers of the real formats ---------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """LeCun's idx format: 0x0000, type 0x08 (uint8), ndim, big-endian uint32 sizes, then the bytes."""
    data = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if gz else open)(path, "wb").write(data)


def write_mnist(root: Path, train: np.ndarray, test: np.ndarray, gz: bool = False) -> None:
    """root/MNIST/raw/ as torchvision leaves it: image and label files for both parts."""
    raw = root / "MNIST" / "raw"
    sfx = ".gz" if gz else ""
    for prefix, images in (("train", train), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte{sfx}", images, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{sfx}", np.arange(len(images), dtype=np.uint8) % 10, gz)


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the CIFAR-10 batches: protocol 2, strings as BINSTRING
    (so they load as bytes with encoding="bytes" and as str with "latin1"), numpy under numpy.core."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write((pickle.SHORT_BINSTRING + bytes([len(data)]) if len(data) < 256
                    else pickle.BINSTRING + struct.pack("<i", len(data))) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def write_cifar(root: Path, train: np.ndarray, test: np.ndarray) -> Path:
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}; images uint8 [N, 3, 32, 32]."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    parts = np.array_split(train, 5)
    for name, images in [(f"data_batch_{i + 1}", p) for i, p in enumerate(parts)] + [("test_batch", test)]:
        batch = {"batch_label": name, "labels": [i % 10 for i in range(len(images))],
                 "data": np.ascontiguousarray(images.reshape(len(images), -1)),
                 "filenames": [f"img_{i}.png" for i in range(len(images))]}
        with open(folder / name, "wb") as f:
            Py2Pickler(f, protocol=2).dump(batch)
    with open(folder / "batches.meta", "wb") as f:
        Py2Pickler(f, protocol=2).dump({"label_names": [f"class{i}" for i in range(10)],
                                        "num_cases_per_batch": len(parts[0]), "num_vis": 3072})
    return folder


def rows_as_bytes(x: torch.Tensor) -> set[bytes]:
    return {bytes(r) for r in x.flatten(1).numpy()}


def raw_levels(dm: ImageDataModule, split: str) -> np.ndarray:
    """The split mapped back to integer levels."""
    return torch.round(dm.denormalize(dm.splits[split]) * (dm.n_levels - 1)).to(torch.uint8).numpy()


# ---- splits and normalisation ------------------------------------------------------------------------
def test_disjoint_subsets_fixed_and_disjoint():
    a = disjoint_subsets(100, {"n_val": 10, "n_test": 20, "n_train": None}, seed=3)
    b = disjoint_subsets(100, {"n_val": 10, "n_test": 20, "n_train": None}, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [len(v) for v in a.values()] == [10, 20, 70]
    assert sorted(torch.cat(list(a.values())).tolist()) == list(range(100))
    with pytest.raises(ValueError, match="dataset.n_test"):
        disjoint_subsets(100, {"n_val": 90, "n_test": 20}, seed=0)


def test_digits_levels_splits_and_state_round_trip():
    dm = DigitsDataModule(n_val=100, n_test=300, seed=1)
    dm.setup()
    assert dm.data_shape == (1, 8, 8) and dm.kind.units_per_example == 64
    sizes = {s: len(x) for s, x in dm.splits.items()}
    assert sizes == {"train": 1797 - 400, "val": 100, "test": 300}
    # one global scalar: the training split has mean 0 and variance 1 over all its values
    train = dm.splits["train"].double()
    assert abs(train.mean().item()) < 1e-6 and abs(train.std(unbiased=False).item() - 1) < 1e-6
    levels = {s: raw_levels(dm, s) for s in dm.splits}
    assert set(np.unique(levels["train"])) <= set(range(17))
    from sklearn.datasets import load_digits

    original = rows_as_bytes(torch.from_numpy(load_digits().images.astype(np.uint8)))
    together = np.concatenate(list(levels.values()))
    assert {bytes(r) for r in together.reshape(len(together), -1)} <= original  # the real images, unchanged
    # the checkpointed normalisation is used as is by a fresh module (not refitted on another split)
    fresh = DigitsDataModule(n_val=100, n_test=300, seed=1, n_train=50)
    fresh.load_state_dict(dm.state_dict())
    fresh.setup()
    assert fresh.scale == dm.scale and torch.equal(fresh.splits["test"], dm.splits["test"])
    assert DigitsDataModule(seed=1).nll_bits_per_dim_8bit(1.0) is None  # 17 levels, not 8-bit


# ---- MNIST --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (8, 28, 28), dtype=np.uint8)
    write_mnist(tmp_path, train, test, gz)
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False, n_val=10, n_test=5)
    dm.prepare_data()
    dm.setup()
    assert dm.data_shape == (1, 28, 28) and dm.kind.units_per_example == 784
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [20, 10, 5]
    assert np.array_equal(raw_levels(dm, "test")[:, 0], test[:5])  # the first n_test, in file order
    got = rows_as_bytes(torch.from_numpy(np.concatenate([raw_levels(dm, "train"), raw_levels(dm, "val")])))
    assert got == rows_as_bytes(torch.from_numpy(train))  # train and val partition the training file
    if not gz:  # torchvision's own reader agrees on the same files
        from torchvision.datasets import MNIST

        assert np.array_equal(MNIST(str(tmp_path), train=True, download=False).data.numpy(), train)


def test_mnist_missing_offline_says_where_and_how(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        MNISTDataModule(data_dir=str(tmp_path / "nowhere"), download=False).setup()
    message = str(err.value)
    assert str((tmp_path / "nowhere" / "MNIST" / "raw").resolve()) in message
    assert "train-images-idx3-ubyte" in message and "dataset.data_dir" in message and "dataset.download" in message
    # download=true but offline: the failure is reported with the same advice (the download is faked here)
    from urllib.error import URLError

    from torchvision.datasets import MNIST

    def offline(self):
        raise URLError("no network")

    monkeypatch.setattr(MNIST, "download", offline)
    with pytest.raises(FileNotFoundError, match="(?s)Downloading failed.*no network.*dataset.data_dir"):
        MNISTDataModule(data_dir=str(tmp_path / "nowhere"), download=True).prepare_data()


# ---- CIFAR-10 -----------------------------------------------------------------------------------------
def test_cifar10_reads_pickled_batches(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (25, 3, 32, 32), dtype=np.uint8)
    train[0] = 0
    train[0, 0, 3, 5] = 255  # red channel, row 3, column 5
    test = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    write_cifar(tmp_path, train, test)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), download=False, n_val=5)
    dm.prepare_data()
    dm.setup()
    assert dm.data_shape == (3, 32, 32)
    assert dm.kind.units_per_example == 1024  # bits per spatial pixel: the 3 channels are summed
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [20, 5, 6]
    assert np.array_equal(raw_levels(dm, "test"), test)
    both = np.concatenate([raw_levels(dm, "train"), raw_levels(dm, "val")])
    assert rows_as_bytes(torch.from_numpy(both)) == rows_as_bytes(torch.from_numpy(train))
    first = next(im for im in both if im.sum() == 255)
    assert first[0, 3, 5] == 255  # channel-major, then row-major, as the release stores it
    # torchvision reads the same files the same way (its md5 check skipped: these are not the release's files)
    import torchvision.datasets.cifar
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    tv = CIFAR10(str(tmp_path), train=False, download=False)
    assert np.array_equal(tv.data, test.transpose(0, 2, 3, 1))


def test_cifar10_refuses_foreign_pickles_and_reports_missing(tmp_path):
    folder = write_cifar(tmp_path, np.zeros((5, 3, 32, 32), np.uint8), np.zeros((1, 3, 32, 32), np.uint8))
    import os

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": os.getcwd}, protocol=2))
    with pytest.raises(ValueError, match="test_batch is not a readable CIFAR-10 batch file .*refusing to load posix.getcwd"):
        CIFAR10DataModule(data_dir=str(tmp_path), download=False, n_val=1).setup()
    with pytest.raises(FileNotFoundError, match="(?s)data_batch_1.*cifar-10-batches-py.*dataset.data_dir"):
        CIFAR10DataModule(data_dir=str(tmp_path / "none"), download=False).setup()


# ---- bark (a folder of images) ------------------------------------------------------------------------
def write_row_coded_images(folder: Path, n: int = 2, h: int = 100, w: int = 60) -> None:
    """Grey images whose pixel value encodes (image, row): value = row + 120 * image, so a patch shows where
    it came from. One is saved as RGB and one as PGM, to exercise the conversions."""
    folder.mkdir(parents=True)
    for i in range(n):
        im = np.repeat((np.arange(h) + 120 * (i % 2)).astype(np.uint8)[:, None], w, axis=1)
        if i == 0:
            Image.fromarray(np.stack([im] * 3, -1)).save(folder / f"img{i}.png")
        else:
            Image.fromarray(im).save(folder / f"img{i}.pgm")
    (folder / "notes.txt").write_text("not an image")


def test_bark_region_split_keeps_splits_apart(tmp_path):
    write_row_coded_images(tmp_path / "tex")
    dm = BarkDataModule(folder=str(tmp_path / "tex"), patch_size=8, n_train=300, n_val=50, n_test=60,
                        val_fraction=0.15, test_fraction=0.15)
    dm.setup()
    assert dm.data_shape == (1, 8, 8) and len(dm.splits["test"]) == 60
    bands = {"train": (0, 70), "val": (70, 85), "test": (85, 100)}
    for split, (lo, hi) in bands.items():
        rows = raw_levels(dm, split).astype(int) % 120
        assert rows.min() >= lo and rows.max() < hi, split
        # each patch is 8 consecutive rows of one image, constant along its rows
        assert (np.diff(rows[:, 0], axis=1) == 1).all() and (np.diff(rows[:, 0], axis=2) == 0).all()
    assert {int(v) // 120 for v in np.unique(raw_levels(dm, "train"))} == {0, 1}  # both images used
    again = BarkDataModule(folder=str(tmp_path / "tex"), patch_size=8, n_train=300, n_val=50, n_test=60)
    again.setup()
    assert torch.equal(again.splits["train"], dm.splits["train"])  # fixed seeds


def test_bark_image_split_and_bad_folder(tmp_path):
    folder = tmp_path / "tex"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((20, 20), 10 * i, np.uint8)).save(folder / f"{i}.png")
    dm = BarkDataModule(folder=str(folder), patch_size=4, n_train=40, n_val=10, n_test=10, split_by="image")
    dm.setup()
    values = {s: set(np.unique(raw_levels(dm, s)).tolist()) for s in dm.splits}
    assert values["train"].isdisjoint(values["val"]) and values["train"].isdisjoint(values["test"])
    assert values["val"].isdisjoint(values["test"])
    assert len(values["train"] | values["val"] | values["test"]) == 5
    with pytest.raises(FileNotFoundError, match="dataset.folder"):
        BarkDataModule(folder=str(tmp_path / "missing")).setup()
    with pytest.raises(ValueError, match="dataset.split_by"):
        BarkDataModule(split_by="random")


def test_bark_default_textures_offline():
    dm = BarkDataModule(patch_size=16, n_train=64, n_val=8, n_test=8)
    dm.setup()
    assert dm.data_shape == (1, 16, 16) and "scikit-image" in dm.eval_info()["source"]


# ---- dead leaves --------------------------------------------------------------------------------------
def p_same_leaf(d: float, r_min: float, r_max: float, alpha: float) -> float:
    """P(two points at distance d show the same disk) in a dead-leaves image with radius density ~ r^-alpha:
    the top disk among those touching either point covers both with probability
    int lambda(r) |D_r(x) & D_r(y)| dr / int lambda(r) |D_r(x) | D_r(y)| dr (the lens area in closed form)."""
    r = np.geomspace(r_min, r_max, 200001)
    lam = r**-alpha
    lens = np.where(d < 2 * r, 2 * r * r * np.arccos(np.clip(d / (2 * r), 0, 1))
                    - d / 2 * np.sqrt(np.clip(4 * r * r - d * d, 0, None)), 0.0)
    return np.trapezoid(lam * lens, r) / np.trapezoid(lam * (2 * np.pi * r * r - lens), r)


def test_dead_leaves_matches_the_two_point_statistics():
    x = dead_leaves(2000, 16, 1.0, 100.0, 3.0, np.random.default_rng(5)).astype(int)
    for d in (1, 2, 5):
        expected = p_same_leaf(d, 1.0, 100.0, 3.0)
        expected += (1 - expected) / 256  # different disks can share a grey level
        assert abs((x[:, :, d:] == x[:, :, :-d]).mean() - expected) < 0.01, d
        assert abs((x[:, d:, :] == x[:, :-d, :]).mean() - expected) < 0.01, d
    assert abs(x.mean() - 127.5) < 2.0 and abs(x.std() - math.sqrt((256**2 - 1) / 12)) < 2.0  # uniform grey


def test_dead_leaves_cached_with_its_parameters(tmp_path, monkeypatch):
    kwargs = {"data_dir": str(tmp_path), "image_size": 8, "n_train": 50, "n_val": 10, "n_test": 20, "seed": 2}
    dm = DeadLeavesDataModule(**kwargs)
    dm.prepare_data()
    files = sorted(p.name for p in (tmp_path / "dead_leaves").iterdir())
    assert len(files) == 3 and all("size8" in f and "seed2" in f for f in files)
    dm.setup()
    assert dm.data_shape == (1, 8, 8) and len(dm.splits["test"]) == 20

    def no_generation(self, split):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(DeadLeavesDataModule, "generate", no_generation)
    cached = DeadLeavesDataModule(**kwargs)
    cached.setup()
    assert all(torch.equal(cached.splits[s], dm.splits[s]) for s in dm.splits)
    other = DeadLeavesDataModule(**{**kwargs, "r_max": 50.0})
    assert other.cache_path("train") != dm.cache_path("train")  # a parameter change is a different file


# ---- dequantisation and the 8-bit NLL -----------------------------------------------------------------
class Levels(ImageDataModule):
    """Fixed 8-bit images of iid pixels drawn from `probs` over the 256 levels, for known-answer tests."""

    name = "levels"

    def __init__(self, probs: np.ndarray, n: int = 2000, **kwargs) -> None:
        super().__init__(**kwargs)
        rng = np.random.default_rng(0)
        self.probs = probs
        self.levels = {s: rng.choice(256, size=(n, 1, 4, 4), p=probs).astype(np.uint8)
                       for s in ("train", "val", "test")}

    def make_split(self, split):
        return self.to_raw(self.levels[split])


def peaked_probs() -> np.ndarray:
    p = np.zeros(256)
    p[[10, 11, 12, 40, 41, 100, 200, 201, 202, 203]] = [1, 2, 3, 1, 5, 2, 1, 1, 4, 2]
    return p / p.sum()


@pytest.mark.parametrize("mode", ["bin", "released", "none"])
def test_dequantization_width(mode):
    dm = Levels(peaked_probs(), dequantization=mode)
    dm.setup()
    x0 = dm.splits["train"]
    torch.manual_seed(0)
    u = dm.dequantize(x0) - x0
    w = {"bin": (1 / 255) / dm.scale, "released": (1 / 255) * dm.scale, "none": 0.0}[mode]
    assert u.abs().max().item() <= w / 2 + 1e-6
    if w:  # U(-w/2, w/2): variance w^2 / 12
        assert abs(u.double().var().item() / (w * w / 12) - 1) < 0.05
        assert dm.nll_bits_per_dim_8bit(0.0) == pytest.approx(-math.log2(w))  # -log2 w - K at K = 0
    else:
        assert torch.equal(u, torch.zeros_like(u)) and dm.nll_bits_per_dim_8bit(0.0) is None


@pytest.mark.parametrize("mode", ["bin", "released"])
def test_nll_8bit_exact_for_a_density_constant_on_each_bin(mode):
    """The model that spreads each level's probability P(k) evenly over its bin (in normalised units) has
    -log2 P(image) / D as its 8-bit NLL, and its density at any dequantised point is P(k) / bin width. So K
    per dimension, evaluated at the module's own dequantised data, must convert to the data's empirical
    cross-entropy exactly (noise of one bin); with the released narrower noise the bound is looser by
    exactly 2 log2(1 / scale)."""
    probs = peaked_probs()
    dm = Levels(probs, dequantization=mode)
    dm.setup()
    torch.manual_seed(1)
    x_tilde = dm.dequantize(dm.splits["test"])
    k = torch.round(dm.denormalize(x_tilde).double() * 255).long()  # the bin each noisy point lies in
    density = torch.from_numpy(probs)[k] / ((1 / 255) / dm.scale)
    K_bits_per_dim = density.log2().mean().item()
    truth = -np.log2(probs[dm.levels["test"]]).mean()
    expected = truth + (0.0 if mode == "bin" else -2 * math.log2(dm.scale))
    assert dm.nll_bits_per_dim_8bit(K_bits_per_dim) == pytest.approx(expected, abs=1e-3)


def test_nll_8bit_bounds_a_gaussian_discrete_likelihood():
    """For a smooth density (the unit Gaussian in normalised units, pi itself) the conversion is an upper
    bound on the discrete NLL, tight to the Jensen gap within a bin; P(level) is the Gaussian's mass on the
    bin [(k -+ 1/2) / 255 - shift] / scale, computed with erf."""
    dm = Levels(peaked_probs(), dequantization="bin")
    dm.setup()
    x0 = dm.splits["test"].double()
    normal = torch.distributions.Normal(0.0, 1.0)
    torch.manual_seed(2)
    K = torch.stack([normal.log_prob(dm.dequantize(x0)) for _ in range(20)]).mean() / math.log(2)
    raw = dm.denormalize(x0)
    hi, lo = ((raw + 0.5 / 255) - dm.shift) / dm.scale, ((raw - 0.5 / 255) - dm.shift) / dm.scale
    truth = -torch.log2(normal.cdf(hi) - normal.cdf(lo)).mean().item()
    nll = dm.nll_bits_per_dim_8bit(K.item())
    assert truth - 1e-3 < nll < truth + 2e-3
    # the log-Jacobian matters: it is several bits here
    assert abs(math.log2(dm.scale) + math.log2(255)) > 3


# ---- configs, figure, train -> evaluate ----------------------------------------------------------------
@pytest.mark.parametrize("name,T", [("mnist", 1000), ("cifar10", 1000), ("dead_leaves", 1000), ("bark", 500),
                                    ("digits", 1000)])
def test_dataset_configs_compose(name, T):
    from hydra.utils import instantiate

    cfg = compose([f"dataset={name}"])
    assert cfg.T == T and cfg.schedule.kind == "sd2015" and cfg.net._target_.endswith("ImageReverseNet")
    dm = instantiate(cfg.dataset)  # no prepare_data: nothing is read or downloaded
    assert isinstance(dm, ImageDataModule) and dm.dequantization == "bin" and dm.name == name


def test_train_evaluate_sample_on_digits(tmp_path):
    from dpm.app.evaluate import evaluate
    from dpm.app.train import train

    cfg = compose([
            "dataset=digits", "T=10", "trainer.max_steps=3", "trainer.val_check_interval=3", "logger=csv",
            "trainer.enable_progress_bar=false", "net.n_hidden_dense_lower=32", "dataset.n_train=64",
            "dataset.n_val=32", "dataset.n_test=32"])
    ecfg = compose([f"ckpt_path={tmp_path / 'run/checkpoints/last.ckpt'}"], "evaluate")
    train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "samples.png").is_file()  # the image figure at the end of training
    result = evaluate(ecfg, tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["unit"] == "bits/pixel" and saved["dequantization"] == "bin" and saved["n_levels"] == 17
    assert "nll_bits_per_dim_8bit" not in saved  # 17 grey levels: not 8-bit data
    assert saved["K_bits_per_dim"] == pytest.approx(result["K"])  # one channel: per pixel = per dimension
    ecfg.task = "sample"
    evaluate(ecfg, tmp_path / "sample")
    png = np.asarray(Image.open(tmp_path / "sample" / "samples.png").convert("RGB")).astype(int)
    assert (png.max(-1) == png.min(-1)).all()  # one channel: drawn in grey
    assert len(np.unique(png[..., 0])) > 10  # grey levels of samples and digits, not a blank page


def test_tile_places_images_row_by_row():
    from dpm.figures.image import tile

    images = torch.arange(5.0).div(10).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    grid = tile(images)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 3)  # 2 rows x 3 columns of 2x2 images, 1-pixel gaps
    assert torch.all(grid[1:3, 4:6] == 0.1) and torch.all(grid[4:6, 1:3] == 0.3) and torch.all(grid[4:6, 7:9] == 1)
    assert torch.all(grid[0] == 1) and torch.all(grid[:, 3] == 1)  # white gaps


def test_image_figure_colour(tmp_path):
    """The figure for 3-channel data: samples of a fixed-output network beside training images."""
    from dpm.figures import draw
    from dpm.core.gaussian import GaussianDiffusion
    from dpm.model.module import DiffusionModule
    from dpm.core.schedules import Schedule
    from tests.helpers import ConstantNet

    colour = np.array([200, 40, 120], dtype=np.uint8)  # every training image this one colour
    train = np.broadcast_to(colour[None, :, None, None], (10, 3, 32, 32)).copy()
    write_cifar(tmp_path, train, np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8))
    dm = CIFAR10DataModule(data_dir=str(tmp_path), download=False, n_val=2)
    dm.setup()
    module = DiffusionModule(ConstantNet(2), GaussianDiffusion(Schedule("sd2015", T=3)), optimizer=torch.optim.Adam)
    path = draw(module, dm, tmp_path / "fig" / "samples.png", seed=0)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    is_colour = (np.abs(pixels - colour).max(-1) <= 2)
    _, cols = np.nonzero(is_colour)
    # the 8 training images in their colour, enlarged, and only in the right-hand panel
    assert is_colour.sum() > 8 * 32 * 32 and cols.min() > pixels.shape[1] / 2
    left = pixels[:, : pixels.shape[1] // 2]
    assert ((left.max(-1) - left.min(-1)) > 60).sum() > 1000  # the samples are colour noise, not grey
