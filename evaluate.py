"""Evaluate a checkpoint: python evaluate.py ckpt_path=PATH [task=bound|sample] [hydra.run.dir=DIR]."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dpm.run import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
