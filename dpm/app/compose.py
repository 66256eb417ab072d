"""Composing a config the way train.py and evaluate.py do, for code that runs without Hydra's app (the benchmark,
the tests): one place that knows where the project's `conf/` is."""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from dpm.app.hydra_guard import install as guard_hydra
from dpm.errors import ConfigError


def config_dir() -> Path:
    """The project's `conf/` folder: beside the `dpm` package in a checkout (`pip install -e .`)."""
    path = Path(__file__).resolve().parents[2] / "conf"
    if not (path / "train.yaml").is_file():
        raise ConfigError(f"no conf/train.yaml at {path}: dpm runs from a checkout of the project "
                          "(pip install -e . in the cloned folder)")
    return path


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train",
            return_hydra_config: bool = False) -> DictConfig:
    """The config `python train.py OVERRIDES` (or evaluate.py, config_name="evaluate") would receive; with
    return_hydra_config, its `hydra` node too (as Hydra's launchers and callbacks see it)."""
    guard_hydra(config_dir())
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            return hydra_compose(config_name=config_name, overrides=list(overrides),
                                 return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()


EVALUATE_GROUPS = ("task",)  # config groups that only evaluate.py reads (conf/ holds both commands' groups)


def help_groups(command: str) -> str:
    """The config groups of one command with their options, as Hydra's --help lists them ("group: a, b, c" lines):
    train.py's are every group but evaluate.py's (EVALUATE_GROUPS), evaluate.py's are those. Read from Hydra's own
    search path while it runs (a user's hydra.searchpath included), else from conf/. conf/hydra/*.yaml use it as
    ${dpm_help_groups:train|evaluate} in their help template."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    def wanted(group: str) -> bool:
        top = group.split("/")[0]
        return top != "hydra" and (top in EVALUATE_GROUPS) == (command == "evaluate")

    if GlobalHydra.instance().is_initialized():
        loader = GlobalHydra.instance().config_loader()
        options = {g: loader.get_group_options(g, ObjectType.CONFIG) for g in loader.list_groups("")}
    else:
        options = {d.name: [f.stem for f in d.glob("*.yaml")] for d in config_dir().iterdir() if d.is_dir()}
    return "\n".join(f"{g}: {', '.join(sorted(o))}" for g, o in sorted(options.items()) if o and wanted(g))
