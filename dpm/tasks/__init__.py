"""The evaluate tasks, one registry: `bound` (K on a split, eval.json), `sample` (a figure of samples), the tasks
that multiply the model by another distribution r (paper 2.5, App. C) and the Parzen estimate of Table 2.

Each task is a module here with `check(cfg, dm, diffusion) -> settings`, which reads its settings (its own config
node, conf/task/<name>.yaml) and fails with a message naming the key, and `run(module, dm, cfg, out_dir, device,
settings) -> result`, which writes out_dir/<task>.* (dpm.app.evaluate calls check before anything is written).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from dpm.tasks import bound, complete, constrain, denoise, inpaint, parzen, sample


@dataclass(frozen=True)
class Task:
    check: Callable[..., dict]
    run: Callable[..., dict]
    processes: bool = False  # run takes a launched lightning.fabric.Fabric (evaluate.py devices=N) as fabric=

    def __call__(self, module, dm, cfg: DictConfig, out_dir: Path, device: torch.device, **launch) -> dict:
        """check, then run (for callers that hold a restored model already)."""
        return self.run(module, dm, cfg, Path(out_dir), device, self.check(cfg, dm, module.diffusion), **launch)


TASKS: dict[str, Task] = {
    "bound": Task(bound.check, bound.run, processes=True),
    "sample": Task(sample.check, sample.run),
    "inpaint": Task(inpaint.check, inpaint.run),
    "denoise": Task(denoise.check, denoise.run),
    "complete": Task(complete.check, complete.run),
    "constrain": Task(constrain.check, constrain.run),
    "parzen": Task(parzen.check, parzen.run),
}
