"""What a config folder may not do, checked inside Hydra's own composition.

Hydra instantiates what its own node names (`hydra.callbacks`, `hydra.launcher`, `hydra.sweeper`), configures
logging from `hydra.job_logging` / `hydra.hydra_logging` (whose handlers are classes) and sets `hydra.job.env_set`
in the job's environment, all before dpm's task function starts; so those values are checked here, as each config is
loaded and as each composed config leaves Hydra's loader, not in dpm.app.checks (which runs later, inside the task):

- A config folder (`hydra.searchpath=[...]`, `--config-dir`, `--config-path`: any source but dpm's own `conf/`,
  Hydra's and its plugins' built-in configs) is data. It may set dpm's settings (a data set, a network, an
  experiment), never Hydra's own node and never `trust`: trust comes only from what the person typed.
- What Hydra will instantiate passes the allow-list of dpm.app.checks.check_targets (HYDRA_TARGETS), with the
  packages typed in `trust=[...]`; logging handlers are the standard library's `logging` classes, built without
  factories (`()`); every value of the launcher is one line (a SLURM batch script is written from them).

The two wrapped methods are private to Hydra, so the Hydra version is pinned (pyproject.toml) and install() fails
loudly if they are missing; tests/test_security.py shows each refusal through Hydra's real composition.
"""

from __future__ import annotations

import os
from typing import Any

from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, ListConfig, OmegaConf

from dpm.errors import ConfigError

# What Hydra may instantiate from its own node: node -> (allowed module prefixes, required base class).
HYDRA_TARGETS: dict[str, tuple[tuple[str, ...], str]] = {
    "callbacks": (("dpm.sweeps.",), "hydra.experimental.callback.Callback"),
    "launcher": (("hydra._internal.core_plugins.basic_launcher.", "hydra_plugins.hydra_submitit_launcher."),
                 "hydra.plugins.launcher.Launcher"),
    "sweeper": (("hydra._internal.core_plugins.basic_sweeper.",), "hydra.plugins.sweeper.Sweeper"),
}
FOLDER_MAY_NOT_SET = ("hydra", "trust")
LOGGING_NODES = ("job_logging", "hydra_logging")
STREAMS = ("ext://sys.stdout", "ext://sys.stderr")


class RefusedConfig(ConfigCompositionException, ConfigError):
    """A config refused during Hydra's composition: Hydra prints its message alone (a compact error), and dpm's
    code catches it as the ConfigError it is (exit 2)."""


_OWN_SOURCES: list[str] = ["pkg://hydra.conf", "structured://"]  # and dpm's conf/ folder (install)


def is_own_source(path: str) -> bool:
    """path (a config source, as Hydra's ConfigResult.path has it) is dpm's conf/, Hydra's built-in configs, or
    Hydra's ConfigStore (filled only by installed code: Hydra and its plugins)."""
    if path.startswith("file://"):
        path = f"file://{os.path.realpath(path[len('file://'):])}"
    return path in _OWN_SOURCES


def check_source(path: str, config_path: str, config: Any) -> None:
    """A config loaded from a folder that is not dpm's own may not set Hydra's node or trust."""
    if is_own_source(path) or not isinstance(config, DictConfig):
        return
    for key in FOLDER_MAY_NOT_SET:
        if key in config:
            why = ("trust comes only from the command line (trust=[pkg])" if key == "trust" else
                   "Hydra acts on its own node (callbacks, launcher, sweeper, logging, environment) before dpm "
                   "checks anything, so only dpm's own configs and the command line may set it")
            raise RefusedConfig(f"{path}/{config_path}.yaml sets `{key}`, which a config folder may not: {why}. "
                                f"Remove `{key}` from that file; the folder may set dpm's settings (data set, "
                                "network, experiment).")


def typed_trust(overrides: list[str]) -> tuple[str, ...]:
    """The packages named by `trust=...` among the command line's overrides (every value of a sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dpm.app.trust import trusted_packages

    names: list[str] = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.key_or_group != "trust" or override.is_delete():
            continue
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            names.extend(value if isinstance(value, list) else [value])
    return trusted_packages({"trust": names})


def check_hydra_node(cfg: DictConfig, trusted: tuple[str, ...]) -> None:
    """What Hydra will instantiate or configure from cfg.hydra: targets on the allow-list, logging from `logging`'s
    own classes, one-line launcher values."""
    from dpm.app.checks import check_targets

    hydra = cfg.get("hydra")
    if not isinstance(hydra, DictConfig):
        return
    try:
        check_targets(hydra, source="the hydra node", trusted=trusted, allowed=HYDRA_TARGETS, functions=(),
                      checkpoint=False)
    except ConfigError as err:
        raise RefusedConfig(f"hydra.{err}") from None
    for node in LOGGING_NODES:
        _check_logging(hydra.get(node), f"hydra.{node}")
    _check_one_line(hydra.get("launcher"), "hydra.launcher")


def _check_logging(node: Any, key: str) -> None:
    """logging.config.dictConfig imports and calls what a `class` or `()` names: only `logging`'s classes, no
    factories, and only the standard streams by `ext://`."""
    if isinstance(node, DictConfig):
        for k, v in node.items_ex(resolve=False):
            where = f"{key}.{k}"
            if k == "()":
                raise RefusedConfig(f"{where}={v!r} is refused: logging may use only the standard `logging` classes "
                                    "(no factories)")
            if k == "class" and not (isinstance(v, str) and v.startswith("logging.")):
                raise RefusedConfig(f"{where}={v!r} is refused: logging handlers and formatters must be classes of "
                                    "the standard `logging` module")
            if isinstance(v, str) and v.startswith("ext://") and v not in STREAMS:
                raise RefusedConfig(f"{where}={v!r} is refused: logging may name only {list(STREAMS)}")
            _check_logging(v, where)
    elif isinstance(node, ListConfig):
        for i, v in enumerate(node):
            _check_logging(v, f"{key}.{i}")


def _check_one_line(node: Any, key: str) -> None:
    """The launcher's values, resolved where they can be (some read Hydra's runtime, set later), are single lines."""
    if isinstance(node, DictConfig):
        for k in node.keys():
            try:
                value = node[k]
            except Exception:  # an interpolation of Hydra's runtime, which is set only in the job
                continue
            _check_one_line(value, f"{key}.{k}")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            _check_one_line(node[i], f"{key}.{i}")
    elif isinstance(node, str) and ("\n" in node or "\r" in node):
        raise RefusedConfig(f"{key}={node!r} is refused: a launcher value must be one line (the SLURM launcher "
                            "writes them into a batch script)")


def install(conf_dir: str | os.PathLike) -> None:
    """Wrap Hydra's config loader (once per process) so that every config it loads and composes is checked;
    conf_dir: dpm's own config folder (its configs may set everything)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    own = f"file://{os.path.realpath(conf_dir)}"
    if own not in _OWN_SOURCES:
        _OWN_SOURCES.append(own)
    if getattr(ConfigLoaderImpl, "_dpm_guarded", False):
        return
    load_single = getattr(ConfigLoaderImpl, "_load_single_config", None)
    load_configuration = getattr(ConfigLoaderImpl, "load_configuration", None)
    if load_single is None or load_configuration is None:
        import hydra

        raise RuntimeError(f"hydra-core {hydra.__version__} lacks the config loader methods dpm checks configs in; "
                           "install the version pyproject.toml pins (pip install -e .)")

    def guarded_load_single(self, default, repo):
        result = load_single(self, default, repo)
        check_source(result.path, str(default.config_path), result.config)
        return result

    def guarded_load_configuration(self, config_name, overrides, run_mode, *args, **kwargs):
        cfg = load_configuration(self, config_name, overrides, run_mode, *args, **kwargs)
        try:
            trusted = typed_trust(overrides)
        except ConfigError as err:
            raise RefusedConfig(str(err)) from None
        check_hydra_node(cfg, trusted)
        return cfg

    ConfigLoaderImpl._load_single_config = guarded_load_single
    ConfigLoaderImpl.load_configuration = guarded_load_configuration
    ConfigLoaderImpl._dpm_guarded = True

