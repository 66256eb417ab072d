"""Which code beyond dpm's own a command may import: the packages the person running it names with
`trust=[pkg, ...]` on the command line (README, "Bring your own data and code").

A config names classes by `_target_`; dpm.app.checks allows dpm's own (and Lightning's, torch's) by module prefix.
A class in a trusted package is allowed too, at the same nodes and with the same required base class. A checkpoint
is data and never code (docs/contracts.md, contract 10): the packages it trusted when it was trained are recorded
in its config but never used; rebuilding it (evaluate.py, resuming) trusts only what the command names.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from dpm.errors import ConfigError

TRUST_KEY = "trust"
PACKAGE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
TASK_SIGNATURE = "run(module, dm, cfg, out_dir, device) -> dict"
# Packages a refusal never suggests trusting: Python's own (os, subprocess, builtins, ...) and the libraries dpm
# runs on. None of them holds a data set, network or task for dpm, so a config or checkpoint naming one of their
# functions is an attempt to run it, not a user's own class.
NEVER_SUGGESTED = frozenset(sys.stdlib_module_names) | {
    "builtins", "torch", "torchvision", "lightning", "lightning_fabric", "pytorch_lightning", "torchmetrics", "hydra",
    "hydra_plugins", "omegaconf", "submitit", "wandb", "numpy", "scipy", "sklearn", "skimage", "matplotlib", "PIL",
    "mlxtend", "pandas", "yaml", "setuptools", "pip", "pkg_resources", "distutils", "filelock"}


def trusted_packages(cfg: Any) -> tuple[str, ...]:
    """The packages cfg's `trust` names (a list, or one name), each a dotted module path outside dpm."""
    value = cfg.get(TRUST_KEY) if isinstance(cfg, (DictConfig, dict)) else None
    if value is None:
        return ()
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value)
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and PACKAGE.fullmatch(n) for n in names):
        raise ConfigError(f"trust={value!r} is invalid: give importable package names, e.g. trust=[mypkg] or "
                          "trust=[mypkg,otherpkg.models]")
    for name in names:
        if name.split(".")[0] == "dpm":
            raise ConfigError(f"trust={value!r} is invalid: dpm's own classes are allowed where they belong without "
                              "trust; name your own packages")
        if name.split(".")[0] in sys.stdlib_module_names or name.split(".")[0] == "builtins":
            raise ConfigError(f"trust={value!r} is invalid: {name!r} is part of Python itself, which holds no data "
                              "set, network or task for dpm; name your own packages")
    return tuple(names)


def is_trusted(target: str, packages: tuple[str, ...]) -> bool:
    """target (a dotted path) lies in one of the packages."""
    return any(target == p or target.startswith(p + ".") for p in packages)


def how_to_trust(target: Any, packages: tuple[str, ...], from_checkpoint: bool) -> str:
    """The sentence a refusal ends with: how to allow the target's package, if it could be allowed at all."""
    if not isinstance(target, str) or not PACKAGE.fullmatch(target):
        return ""
    if target.split(".")[0] == "dpm" or target.split(".")[0] in NEVER_SUGGESTED:
        return ""
    package = target.split(".")[0]
    now = f" (trusted now: {list(packages)})" if packages else ""
    if from_checkpoint:
        return (f" A checkpoint never makes code run by itself: if you trust the package {package!r}, name it on "
                f"the command line, e.g. python evaluate.py ckpt_path=... trust=[{package}] (or python train.py "
                f"ckpt_path=... trust=[{package}] to resume){now}.")
    return (f" To use your own class, name its package on the command line: trust=[{package}] (it must be "
            f"importable: installed, or on PYTHONPATH){now}.")


def trusted_task(name: str, packages: tuple[str, ...]) -> Callable[..., dict]:
    """The `run` of a task module in a trusted package (task=own own.module=mypkg.mytask), checked against
    TASK_SIGNATURE."""
    if not is_trusted(name, packages):
        hint = how_to_trust(name, packages, from_checkpoint=False) if "." in name else ""
        raise ConfigError(f"own.module={name!r} is not a module in a trusted package.{hint}")
    try:
        task = importlib.import_module(name)
    except Exception as err:  # ImportError, or the module's own SyntaxError or error at import: it cannot be used
        raise ConfigError(f"own.module={name!r} could not be imported ({type(err).__name__}: {err})") from None
    run = getattr(task, "run", None)
    try:
        inspect.signature(run).bind(None, None, None, None, None)
    except (TypeError, ValueError):
        raise ConfigError(f"own.module={name!r} breaks the task contract: the module must define {TASK_SIGNATURE} "
                          "(README, 'Bring your own data and code')") from None
    return run
