"""The evaluate tasks that multiply the model by another distribution r (paper 2.5, App. C) and the Parzen
estimate of Table 2. TASKS maps each task name to run(module, dm, cfg, out_dir, device) -> result dict; each
run first checks its settings (its `check`) and fails with a message naming the key before any sampling, then
writes out_dir/<task>.png, <task>.npz and <task>.json."""

from __future__ import annotations

from typing import Callable

from dpm.tasks import complete, constrain, denoise, inpaint, parzen

TASKS: dict[str, Callable[..., dict]] = {
    "inpaint": inpaint.run,
    "denoise": denoise.run,
    "complete": complete.run,
    "constrain": constrain.run,
    "parzen": parzen.run,
}
