"""Two nodes on one machine: torchrun --nnodes=2 starts one process per "node" on 127.0.0.1, as it would on two
machines. Training splits the global batch over nodes x devices (the same run as 2 devices of one node, bit for bit),
writes one checkpoint, and evaluate.py on the 2 nodes gives the K of one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["trainer.accelerator=cpu", "trainer.max_steps=30", "trainer.val_check_interval=10", "T=6",
        "trainer.enable_progress_bar=false", "dataset.n_train=128", "dataset.n_val=32", "dataset.n_test=32",
        "dataset.batch_size=32", "callbacks=minimal", "latest_link=null", "progress=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_two_nodes(script: str, *args: str) -> list[subprocess.Popen]:
    """`torchrun --nnodes=2 --node_rank=r --nproc_per_node=1` for r = 0, 1: two agents meeting at 127.0.0.1."""
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                              "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", script, *args],
                             cwd=ROOT, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for rank in (0, 1)]


def finish(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]


@pytest.mark.timeout(600)
def test_two_nodes_train_one_run_split_over_nodes_and_evaluate_the_same_K(tmp_path):
    run = tmp_path / "nodes"
    nodes = on_two_nodes("train.py", *TINY, "trainer.devices=1", "trainer.num_nodes=2", "trainer.strategy=ddp",
                         f"hydra.run.dir={run}")
    devices = subprocess.Popen([sys.executable, "train.py", *TINY, "trainer.devices=2", "trainer.strategy=ddp",
                                f"hydra.run.dir={tmp_path / 'devices'}"], cwd=ROOT, env=ENV, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finish([*nodes, devices])
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts[-1] == "last.ckpt" and len(ckpts) == 2  # one last.ckpt and one best-*.ckpt: written by rank 0 only
    two_nodes = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    one_node = torch.load(tmp_path / "devices" / "checkpoints" / "last.ckpt", weights_only=True)
    # the global batch of 32 split 16 + 16: 128 examples make 4 steps an epoch (a whole batch of 32 on each of the
    # 2 processes would make 2), so step 30 is in epoch 7 (15 otherwise)
    assert two_nodes["global_step"] == 30 and two_nodes["epoch"] == 30 * 32 // 128
    for key, value in one_node["state_dict"].items():  # nodes x devices = 2 x 1 trains as 1 x 2, bit for bit
        assert torch.equal(value, two_nodes["state_dict"][key]), key
    finish(on_two_nodes("evaluate.py", f"ckpt_path={run}/checkpoints/last.ckpt", "devices=1", "num_nodes=2",
                        "accelerator=cpu", "progress=false", f"hydra.run.dir={tmp_path / 'eval_2_nodes'}"))
    from dpm.app.compose import compose
    from dpm.app.evaluate import evaluate

    one = evaluate(compose([f"ckpt_path={run}/checkpoints/last.ckpt", "progress=false"], config_name="evaluate"),
                   tmp_path / "eval_1")
    two = json.loads((tmp_path / "eval_2_nodes" / "eval.json").read_text())
    assert two["processes"] == 2
    for key in ("K", "K_stderr", "L_null", "n_examples"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
