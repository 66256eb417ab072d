"""Evaluate a checkpoint: python evaluate.py ckpt_path=PATH [task=...] [devices=N] [hydra.run.dir=DIR]."""

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from dpm.app.cli import ddp_child_argv, run_app
from dpm.app.cli import main as run_command
from dpm.app.evaluate import evaluate
from dpm.app.compose import help_groups
from dpm.app.rundir import eval_dir

OmegaConf.register_new_resolver("dpm_eval_dir", eval_dir, replace=True)
OmegaConf.register_new_resolver("dpm_help_groups", help_groups, replace=True)  # --help's groups


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_command(evaluate, cfg, "evaluate")


if __name__ == "__main__":
    sys.argv = ddp_child_argv(sys.argv, dict(os.environ))  # a rank > 0 of a multirun job (devices=N) runs that job only
    run_app(main)
