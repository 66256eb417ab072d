"""Train a diffusion probabilistic model: python train.py [overrides]. See README.md."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dpm.run import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg, HydraConfig.get().runtime.output_dir)
    return metrics.get("val/K")  # what a Hydra sweeper would maximise


if __name__ == "__main__":
    main()
