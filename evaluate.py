"""Evaluate a checkpoint: python evaluate.py ckpt_path=PATH [task=bound|sample] [hydra.run.dir=DIR]."""

import hydra
from omegaconf import DictConfig, OmegaConf

from dpm.cli import main as run_command
from dpm.run import evaluate
from dpm.rundir import eval_dir

OmegaConf.register_new_resolver("dpm_eval_dir", eval_dir, replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_command(evaluate, cfg, "evaluate")


if __name__ == "__main__":
    main()
