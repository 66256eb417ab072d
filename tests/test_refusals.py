"""A refused command leaves its run directory as it found it (so the corrected command can use it), and the
messages and exit codes of the settings and files a user gets wrong (one short message naming the key or file,
no traceback), all through dpm.app.cli.main in this process."""

from __future__ import annotations

import errno
import os
import re
import signal

import numpy as np
import pytest
import torch

from dpm.app.compose import compose
from dpm.app.train import train
from tests.helpers import save_untrained
from tests.test_faults import TINY, cli_in_process

EVAL = ["progress=false"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A tiny Swiss-roll run, untrained digits and heartbeat checkpoints, checkpoints with junk inside, bad masks."""
    root = tmp_path_factory.mktemp("refusals")
    train(compose(TINY), root / "run")
    real = torch.load(root / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    save_untrained(root / "digits.ckpt", ["dataset=digits", "T=6", "dataset.n_train=64"])
    save_untrained(root / "heartbeat.ckpt", ["dataset=heartbeat", "T=6", "dataset.n_train=64", "dataset.n_val=16",
                                             "dataset.n_test=16"])
    torch.save({**real, "dpm_config": {"dataset": "junk", "T": 6}}, root / "junk_config.ckpt")
    torch.save({**real, "state_dict": {"net.x": "junk"}}, root / "junk_state.ckpt")
    torch.save({**real, "state_dict": {k: torch.zeros(3) for k in real["state_dict"]}}, root / "wrong_shapes.ckpt")
    np.save(root / "wrong_shape.npy", np.ones((3, 3)))
    np.save(root / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (root / "not_an_image.png").write_bytes(b"this is not a png")
    return root


def test_a_refused_setting_leaves_the_directory_free_for_the_corrected_command(ws, monkeypatch, capsys):
    """train.py: Lightning's refusals (strategy, devices, accelerator) come before the directory is claimed;
    evaluate.py: a task's refusal. Each leaves nothing, and the corrected command then runs in the same directory."""
    refused = [["trainer.strategy=foo"], ["trainer.devices=-1"]]
    if not torch.cuda.is_available():
        refused.append(["trainer.accelerator=gpu"])
    for i, args in enumerate(refused):
        out = ws / "again" / f"train{i}"
        assert cli_in_process("train.py", [*TINY, *args, f"hydra.run.dir={out}"], monkeypatch) == 2
        assert re.search(r"error: trainer \(.*trainer\.(strategy|devices|accelerator)=", capsys.readouterr().err)
        assert not out.exists()
    assert cli_in_process("train.py", [*TINY, f"hydra.run.dir={out}"], monkeypatch) == 0
    assert (out / "eval.json").is_file()
    out = ws / "again" / "inpaint"
    digits = f"ckpt_path={ws / 'digits.ckpt'}"
    assert cli_in_process("evaluate.py", [*EVAL, digits, "task=inpaint", f"inpaint.mask={ws / 'wrong_shape.npy'}",
                                          f"hydra.run.dir={out}"], monkeypatch) == 2
    assert "has shape (3, 3)" in capsys.readouterr().err and not out.exists()
    assert cli_in_process("evaluate.py", [*EVAL, digits, "task=inpaint", "inpaint.n=2",
                                          f"hydra.run.dir={out}"], monkeypatch) == 0
    assert (out / "inpaint.json").is_file()


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_evaluate_exits_with_its_code_and_frees_the_directory(ws, monkeypatch, capsys, sig, code):
    """The signal arrives while the task runs (its handler raises there); parzen writes no eval.json, and the
    message names none."""
    from dpm.tasks import TASKS, Task, parzen

    def interrupted_run(*args, **kwargs):
        os.kill(os.getpid(), sig)
        raise AssertionError("the signal should have stopped the task")

    monkeypatch.setitem(TASKS, "parzen", Task(parzen.check, interrupted_run))
    out = ws / "signalled" / sig.name
    got = cli_in_process("evaluate.py", [*EVAL, f"ckpt_path={ws / 'digits.ckpt'}", "task=parzen",
                                         "parzen.n_samples=20", "parzen.n_val=10", f"hydra.run.dir={out}"], monkeypatch)
    err = capsys.readouterr().err
    assert got == code, err
    assert f"stopped by {sig.name}" in err and "eval.json" not in err and not out.exists()


def full_disk(monkeypatch) -> None:
    """Every write into a checkpoint's temporary file fails as on a full disk."""
    real = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        return Full(f) if ".ckpt." in os.readlink(f"/proc/self/fd/{fd}") else f

    monkeypatch.setattr(os, "fdopen", fdopen)


def report(argv):
    from dpm.report import main

    try:
        main(argv)
    except SystemExit as exit_:
        return exit_.code
    return 0


def cli(script, *args):
    """The command `python SCRIPT ARGS` (tiny settings; a fresh hydra.run.dir unless ARGS give one), in-process."""
    def command(w, mp):
        given = [a(w) if callable(a) else a for a in args]
        fresh = [] if any(a.startswith("hydra.run.dir=") for a in given) else [
            f"hydra.run.dir={w / 'poor' / str(len(list((w / 'poor').glob('*'))) if (w / 'poor').is_dir() else 0)}"]
        return cli_in_process(script, [*(TINY if script == "train.py" else EVAL), *given, *fresh], mp)
    return command


def ck(name):
    return lambda w: f"ckpt_path={w / name}"


def at(key, name):
    return lambda w: f"{key}={w / name}"


# (name, command (workspace, monkeypatch) -> exit code, exit code, a regex the stderr must match)
POOR = [
    ("a checkpoint with a junk config inside", cli("evaluate.py", ck("junk_config.ckpt")), 2,
     r"junk_config.ckpt is not a usable dpm checkpoint: dpm_config is not a training run's config"),
    ("a checkpoint with junk weights inside", cli("evaluate.py", ck("junk_state.ckpt")), 2,
     r"junk_state.ckpt is not a usable dpm checkpoint: state_dict is not a mapping of names to tensors"),
    ("a checkpoint whose weights have other shapes", cli("evaluate.py", ck("wrong_shapes.ckpt"), "ckpt_choice=given"), 2,
     r"the checkpoint's weights do not fit the network"),
    ("a full disk during training", lambda w, mp: (full_disk(mp), cli("train.py", at("hydra.run.dir", "full"))(w, mp))[1],
     1, r"(?i)no space left on device: '.*checkpoints/.*\.ckpt'"),
    ("an unwritable run directory", cli("train.py", at("hydra.run.dir", "run/config.yaml/sub")), 2,
     r"hydra.run.dir=.*config.yaml/sub cannot be written"),
    ("a .png mask that is not an image", cli("evaluate.py", ck("digits.ckpt"), "task=inpaint",
                                             at("inpaint.mask", "not_an_image.png")), 2,
     r"inpaint.mask='.*not_an_image.png' could not be read as a .png mask"),
    ("an object-array .npy mask", cli("evaluate.py", ck("digits.ckpt"), "task=inpaint", at("inpaint.mask", "objects.npy")),
     2, r"inpaint.mask='.*objects.npy' could not be read as a .npy mask"),
    ("denoise.sigma_d tiny", cli("evaluate.py", ck("digits.ckpt"), "task=denoise", "denoise.sigma_d=1e-30"), 2,
     r"denoise.sigma_d=1e-30 is invalid: must be in \[0.001, 1000\]"),
    ("denoise.sigma_d huge", cli("evaluate.py", ck("digits.ckpt"), "task=denoise", "denoise.sigma_d=1e30"), 2,
     r"denoise.sigma_d=1e\+30 is invalid: must be in \[0.001, 1000\]"),
    ("a billion particles", cli("evaluate.py", ck("heartbeat.ckpt"), "task=complete", "complete.n=16",
                                "complete.particles=1000000000"), 2,
     r"complete.particles=1000000000 with complete.n=16 would need about [\d,.]+ GiB"),
    ("complete on the Swiss roll", cli("evaluate.py", ck("run/checkpoints/last.ckpt"), "task=complete"), 2,
     r"task=complete needs sequence data .* swiss_roll holds vectors of shape \(2,\)"),
    ("evaluate on devices=-1", cli("evaluate.py", ck("run/checkpoints/last.ckpt"), "devices=-1", "accelerator=cpu"), 2,
     r"devices=-1 is invalid: it must be an integer >= 1"),
    ("report on a missing directory", lambda w, mp: report([str(w / "nosuchdir")]), 2, r"error: .*nosuchdir"),
    ("report on an empty directory", lambda w, mp: report([str((w / "empty").mkdir() or w / "empty")]), 2,
     r"error: .*empty"),
]


@pytest.mark.parametrize("name,command,code,message", POOR, ids=[c[0] for c in POOR])
def test_poor_input_gets_one_clear_message(ws, monkeypatch, capsys, name, command, code, message):
    got = command(ws, monkeypatch)
    out = capsys.readouterr()
    assert got == code, (got, out.err[-3000:])
    assert re.search(message, out.err), out.err[-3000:]
    assert "Traceback" not in out.err + out.out
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(errors[0]) < 1000, out.err[-3000:]


def test_a_non_finite_bound_fails_the_run_and_writes_no_eval_json(ws, monkeypatch, capsys):
    """A diverged model whose loss stayed short of the non-finite stop: exit 1 (a sweep records it FAILED), no
    eval.json with -Infinity or NaN in it."""
    out = ws / "diverged"
    args = [a for a in TINY if not a.startswith(("trainer.max_steps", "trainer.val_check_interval"))]
    got = cli_in_process("train.py", [*args, "optimizer.lr=1e6", "trainer.max_steps=20",
                                      "trainer.val_check_interval=10", f"hydra.run.dir={out}"], monkeypatch)
    err = capsys.readouterr().err
    assert got == 1, err[-2000:]
    assert "the bound on the test split is not finite" in err and not (out / "eval.json").exists()


def test_json_is_strict(tmp_path):
    import json

    from dpm.io.files import write_json

    text = write_json(tmp_path / "eval.json", {"K": float("-inf"), "se": [float("nan"), 1.0]}).read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == {"K": None, "se": [None, 1.0]}


def test_a_checkpoint_never_chooses_to_download_or_write_a_cache(ws, monkeypatch, capsys):
    """Its dataset.data_dir is only a default, shown; download and cache stay off unless the command line asks."""
    real = torch.load(ws / "digits.ckpt", weights_only=True)
    leaves = save_untrained(ws / "leaves.ckpt", ["dataset=dead_leaves", "T=6", "dataset.image_size=8",
                                                 "dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16",
                                                 "dataset.cache=false"])
    crafted = torch.load(leaves, weights_only=True)
    crafted["dpm_config"]["dataset"].update(data_dir=str(ws / "elsewhere"), cache=True)
    torch.save(crafted, ws / "leaves_elsewhere.ckpt")
    out = ws / "leaves_eval"
    assert cli_in_process("evaluate.py", [*EVAL, f"ckpt_path={ws / 'leaves_elsewhere.ckpt'}", "limit=8",
                                          f"hydra.run.dir={out}"], monkeypatch) == 0
    said = capsys.readouterr().out
    assert f"data: DeadLeavesDataModule read from data_dir={ws / 'elsewhere'} (the checkpoint’s; data_dir=... to change)" in said
    assert "cache=false (the checkpoint had true; cache=true to allow)" in said
    assert not (ws / "elsewhere").exists() and (out / "eval.json").is_file()

    import torchvision.datasets

    tried = []
    monkeypatch.setattr(torchvision.datasets, "MNIST", lambda *a, **k: tried.append(a) or pytest.fail("download"))
    mnist = {**real, "dpm_config": {**real["dpm_config"], "dataset": {
        "_target_": "dpm.data.mnist.MNISTDataModule", "data_dir": str(ws / "no_mnist"), "download": True,
        "n_val": 100}}}
    torch.save(mnist, ws / "mnist.ckpt")
    got = cli_in_process("evaluate.py", [*EVAL, f"ckpt_path={ws / 'mnist.ckpt'}", f"hydra.run.dir={ws / 'mnist_eval'}"],
                         monkeypatch)
    out = capsys.readouterr()
    assert got == 2 and not tried and not (ws / "no_mnist").exists(), out.err[-2000:]
    assert "download=false (the checkpoint had true; download=true to allow)" in out.out
    assert str(ws / "no_mnist") in out.err and "Traceback" not in out.err


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_a_run_directory_that_cannot_be_created_is_refused_before_hydra_starts(tmp_path, monkeypatch, capsys, key):
    from dpm.app.cli import run_app

    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr("sys.argv", ["train.py", f"{key}={tmp_path / 'a_file' / 'run'}"])
    with pytest.raises(SystemExit) as exit_:
        run_app(lambda: pytest.fail("Hydra should not have started"))
    assert exit_.value.code == 2
    assert f"error: {key}={tmp_path / 'a_file' / 'run'} cannot be used: {tmp_path / 'a_file'} is a file" in \
        capsys.readouterr().err
