"""Train a diffusion probabilistic model: python train.py [overrides]. See README.md."""

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from dpm.app.cli import ddp_child_argv, run_app
from dpm.app.cli import main as run_command
from dpm.app.compose import help_groups
from dpm.app.train import train

OmegaConf.register_new_resolver("dpm_help_groups", help_groups, replace=True)  # --help's groups


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    result = run_command(train, cfg, "train")
    return result.get("val/K")  # what a Hydra sweeper would maximise


if __name__ == "__main__":
    sys.argv = ddp_child_argv(sys.argv, dict(os.environ))  # a DDP rank > 0 of a multirun job runs that job only
    run_app(main)
