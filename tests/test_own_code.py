"""A user's own DataModule, network, callback and evaluate task in their own package (written into tmp_path):
usable when the command trusts the package (trust=[mypkg]); a checkpoint never trusts anything itself; the
contracts each class must meet are checked with a clear error."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from dpm.app.checkpoint import load_checkpoint
from dpm.app.checks import check_train_config
from dpm.app.compose import compose
from dpm.app.contracts import check_datamodule_class, check_net, check_net_class
from dpm.app.evaluate import evaluate
from dpm.app.trust import trusted_packages, trusted_task
from dpm.data.base import DataModule
from dpm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
         "latest_link=null", "progress=false", "T=8"]

PACKAGE = {
    "mypkg/__init__.py": "",
    "mypkg/data.py": """
        import torch
        from dpm.data.base import SPLITS, DataModule

        class Blobs(DataModule):
            name = "blobs"

            def __init__(self, n: int = 128, **kwargs) -> None:
                super().__init__(**kwargs)
                self.n = n

            def make_split(self, split):
                g = torch.Generator().manual_seed(SPLITS.index(split))
                return torch.randn(self.n, 3, generator=g) * 2 + 1
        """,
    "mypkg/nets.py": """
        import torch
        from torch import nn

        class Tiny(nn.Module):
            def __init__(self, data_shape, n_outputs, T, hidden: int = 16) -> None:
                super().__init__()
                self.D, self.n_outputs, self.T = data_shape[0], n_outputs, T
                self.body = nn.Sequential(nn.Linear(self.D + 1, hidden), nn.Tanh(), nn.Linear(hidden, n_outputs * self.D))

            def forward(self, x, t):
                h = torch.cat([x, t[:, None].to(x.dtype) / self.T], 1)
                return self.body(h).view(len(x), self.n_outputs, self.D)
        """,
    "mypkg/callbacks.py": """
        from pathlib import Path
        import lightning as L

        class Marker(L.Callback):
            def __init__(self, path: str) -> None:
                self.path = path

            def on_train_end(self, trainer, module):
                Path(self.path).write_text(str(trainer.global_step))
        """,
    "mypkg/task.py": """
        import json

        def run(module, dm, cfg, out_dir, device):
            out_dir.mkdir(parents=True, exist_ok=True)
            result = {"n_train": len(dm.splits["train"]), "T": module.diffusion.T}
            (out_dir / "mine.json").write_text(json.dumps(result))
            return result
        """,
    "mypkg/badtask.py": "def run(module):\n    return {}\n",
    "mypkg/failing.py": """
        def run(module, dm, cfg, out_dir, device):
            return {"value": helper()}

        def helper():
            raise ValueError("the task's own mistake")
        """,
    "mypkg/refusing.py": """
        from dpm.errors import ConfigError

        def run(module, dm, cfg, out_dir, device):
            raise ConfigError("own.limit=-1 is invalid: my task needs a positive limit")
        """,
    "mypkg/broken.py": "def run(module, dm, cfg, out_dir, device)\n    return {}\n",  # no colon: a SyntaxError
    "mypkg/conf/__init__.py": "",  # pkg://mypkg.conf reads a package
    "mypkg/conf/net/tiny.yaml": """
        _target_: mypkg.nets.Tiny
        hidden: 16
        """,
    "otherpkg/__init__.py": "from pathlib import Path\nPath(__file__).with_name('IMPORTED').write_text('x')\n",
    "otherpkg/nets.py": "from mypkg.nets import Tiny\n",
    "conf/dataset/blobs.yaml": """
        # @package _global_
        T: 8
        dataset:
          _target_: mypkg.data.Blobs
          n: 128
          batch_size: 32
        """,
    "conf/net/tiny.yaml": """
        _target_: mypkg.nets.Tiny
        hidden: 16
        """,
}


@pytest.fixture
def package(tmp_path, monkeypatch):
    for name, text in PACKAGE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text).lstrip())
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_own_classes_train_and_evaluate_when_trusted_and_a_checkpoint_never_trusts_itself(package):
    run_dir = package / "run"
    out = run(package, "train.py", f"hydra.searchpath=[file://{package / 'conf'}]", "dataset=blobs", "net=tiny",
              "trust=[mypkg]", "+callbacks.mine._target_=mypkg.callbacks.Marker",
              f"+callbacks.mine.path={package / 'marker'}", *QUICK, f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (package / "marker").read_text() == "4"  # the callback ran
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trust"] == ["mypkg"]  # what was trusted
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert f"next:          python evaluate.py ckpt_path={ckpt} trust=[mypkg]" in out.stdout  # what evaluating needs
    out = run(package, "evaluate.py", f"ckpt_path={ckpt}", "task=own", "own.module=mypkg.task", "trust=[mypkg]", "progress=false",
              f"hydra.run.dir={package / 'eval'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((package / "eval" / "mine.json").read_text()) == {"n_train": 128, "T": 8}
    # the checkpoint records trust=[mypkg], but only the command's trust counts
    out = run(package, "evaluate.py", f"ckpt_path={ckpt}", "progress=false", f"hydra.run.dir={package / 'refused'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "mypkg." in out.stderr and "trust=[mypkg]" in out.stderr
    assert not (package / "refused" / "eval.json").exists()
    # a checkpoint naming a package outside the trusted ones is refused with them, and that package never imported
    saved = torch.load(ckpt, weights_only=True)
    saved["dpm_config"]["net"]["_target_"] = "otherpkg.nets.Tiny"
    torch.save(saved, package / "other.ckpt")
    with pytest.raises(ConfigError, match=r"net._target_='otherpkg.nets.Tiny' .* is refused.*trust=\[otherpkg\]"):
        load_checkpoint(package / "other.ckpt", trusted=("mypkg",))
    assert not (package / "otherpkg" / "IMPORTED").exists()
    assert load_checkpoint(ckpt, trusted=("mypkg",))["global_step"] == 4


def test_a_command_line_config_names_own_classes_only_in_trusted_packages(package):
    cfg = compose(["dataset._target_=mypkg.data.Blobs"])
    with pytest.raises(ConfigError, match=r"dataset._target_='mypkg.data.Blobs' .* trust=\[mypkg\]"):
        check_train_config(cfg)
    for bad in ("[dpm]", "['a b']"):
        with pytest.raises(ConfigError, match=r"trust=.* is invalid"):
            trusted_packages(compose([f"trust={bad}"]))
    cfg = compose(["dataset._target_=mypkg.nets.Tiny", "trust=[mypkg]"])  # trusted, but not a DataModule
    with pytest.raises(ConfigError, match=r"not a DataModule subclass"):
        check_train_config(cfg)


def test_contracts_are_checked_with_a_clear_error(package):
    class NoSplits(DataModule):
        pass

    with pytest.raises(ConfigError, match=r"must define make_split"):
        check_datamodule_class(NoSplits())

    class Flat(nn.Module):
        def __init__(self, data_shape, n_outputs, T):
            super().__init__()

        def forward(self, x, t):
            return x  # [N, D], not [N, n_outputs, D]

    class Blobs(DataModule):
        def make_split(self, split):
            return torch.randn(8, 3)

    dm = Blobs()
    dm.setup()
    with pytest.raises(ConfigError, match=r"must return \[N, n_outputs, \*D\] = \[2, 2, 3\] here; got \(2, 3\)"):
        check_net(Flat(None, 2, 8), 2, dm, 8)

    class NoT(nn.Module):
        def __init__(self, data_shape, n_outputs):
            super().__init__()

    with pytest.raises(ConfigError, match=r"\['T'\] missing"):
        check_net_class(NoT)
    with pytest.raises(ConfigError, match=r"run\(module, dm, cfg, out_dir, device\)"):
        trusted_task("mypkg.badtask", ("mypkg",))
    with pytest.raises(ConfigError, match=r"trust=\[mypkg\]"):
        trusted_task("mypkg.task", ())


def test_a_failing_own_task_is_named_with_its_traceback_and_a_broken_one_in_one_line(package):
    """A ValueError inside the user's task is their code failing (exit 1): its traceback, then one line naming
    own.module; a ConfigError it raises is a refusal of a setting (exit 2); a module that does not compile is one
    line (exit 2), as an ImportError is."""
    from tests.helpers import save_untrained

    ckpt = save_untrained(package / "roll.ckpt", ["T=6", "dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16"])
    common = [f"ckpt_path={ckpt}", "task=own", "trust=[mypkg]", "progress=false"]
    failing = run(package, "evaluate.py", *common, "own.module=mypkg.failing", f"hydra.run.dir={package / 'f'}")
    assert failing.returncode == 1, failing.stderr[-3000:]
    assert "Traceback" in failing.stderr and re.search(r'mypkg/failing.py", line \d+, in helper', failing.stderr)
    assert failing.stderr.strip().splitlines()[-1] == ("error: own.module='mypkg.failing' failed: ValueError: the "
                                                       "task's own mistake (its traceback is above)")
    with pytest.raises(ConfigError, match=r"^own.module='mypkg.refusing': own.limit=-1 is invalid"):  # exit 2
        evaluate(compose([*common, "own.module=mypkg.refusing"], config_name="evaluate"), package / "r")
    broken = run(package, "evaluate.py", *common, "own.module=mypkg.broken", f"hydra.run.dir={package / 'b'}")
    assert broken.returncode == 2 and "Traceback" not in broken.stderr, broken.stderr[-3000:]
    assert "error: own.module='mypkg.broken' could not be imported (SyntaxError: " in broken.stderr
    assert "broken.py, line 1" in broken.stderr


def test_a_config_package_with_its_init_file_adds_options_without_a_warning(package):
    """The README's hydra.searchpath=[pkg://mypkg.conf]: mypkg/conf/__init__.py makes it a package, so Hydra finds
    it without its `is not available` warning (and the README says to add one)."""
    out = run(package, "train.py", "hydra.searchpath=[pkg://mypkg.conf]", "net=tiny", "trust=[mypkg]", "--cfg", "job")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "_target_: mypkg.nets.Tiny" in out.stdout and "not available" not in out.stderr
    assert "mypkg/conf/__init__.py" in (ROOT / "README.md").read_text()
