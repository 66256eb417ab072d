"""Checks of a composed config before anything is built or written: what may be instantiated (a checkpoint is
data, never code), which keys each constructor takes, and the range of every numeric setting.

Every failure is a ConfigError: one paragraph naming the key, the bad value and what would be valid.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from dpm.app.trust import how_to_trust, is_trusted, trusted_packages
from dpm.errors import ConfigError
from dpm.ranges import integer_problem, real_problem


# ---- what a config (or a checkpoint's config) may instantiate ------------------------------------------------
# node -> (allowed module prefixes, required base class path or None for an explicit callable list)
ALLOWED_TARGETS: dict[str, tuple[tuple[str, ...], str]] = {
    "dataset": (("dpm.data.",), "dpm.data.base.DataModule"),
    "schedule": (("dpm.core.schedules.",), "dpm.core.schedules.Schedule"),
    "diffusion": (("dpm.core.",), "dpm.core.diffusion.Diffusion"),  # any kind: a Diffusion subclass under dpm.core
    "net": (("dpm.nets.",), "torch.nn.Module"),
    "optimizer": (("torch.optim.",), "torch.optim.Optimizer"),
    "lr_scheduler": (("dpm.model.optim.", "torch.optim.lr_scheduler."), "torch.optim.lr_scheduler.LRScheduler"),
    "trainer": (("lightning.pytorch.",), "lightning.pytorch.Trainer"),
    "trainer.strategy": (("lightning.pytorch.strategies.",), "lightning.pytorch.strategies.Strategy"),
    "callbacks": (("lightning.pytorch.callbacks.", "dpm.model.callbacks.", "dpm.figures.callbacks."),
                  "lightning.pytorch.Callback"),
    "logger": (("lightning.pytorch.loggers.",), "lightning.pytorch.loggers.Logger"),
}
# Plain functions that return an allowed object (a learning-rate schedule).
ALLOWED_FUNCTIONS = ("dpm.model.optim.released_lr_decay", "dpm.model.optim.cosine_to_floor")
COLLECTIONS = ("callbacks", "logger")  # nodes whose children are each a `_target_` node


def _locate(path: str) -> Any:
    """The object at a dotted path, importing only its module (whose prefix was already allowed)."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def check_targets(cfg: DictConfig | dict, source: str = "the config", trusted: tuple[str, ...] | None = None,
                  allowed: dict[str, tuple[tuple[str, ...], str]] | None = None,
                  functions: tuple[str, ...] = ALLOWED_FUNCTIONS, checkpoint: bool | None = None) -> None:
    """Refuse any `_target_` outside the allow-list (ALLOWED_TARGETS unless `allowed` is given) before anything is
    instantiated.

    Every `_target_` anywhere in cfg must sit at one of the known nodes (dataset, net, ..., callbacks.<name>,
    logger.<name>), start with that node's allowed prefixes or lie in a trusted package (dpm.app.trust), and name
    a subclass of its base (or one of `functions`). Nothing outside those packages is imported. Hydra's other
    special keys are refused (SPECIAL_KEYS). `trusted`: the packages the command trusts (for a checkpoint's
    config); None takes cfg's own `trust`. cfg must be resolved (`resolved`): an interpolation is a string here.
    `checkpoint`: whether cfg comes from a checkpoint (the refusal's advice differs); None: when `trusted` is given.
    """
    allowed = ALLOWED_TARGETS if allowed is None else allowed
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    from_checkpoint = trusted is not None if checkpoint is None else checkpoint
    trusted = trusted_packages(cfg) if trusted is None else trusted
    allowed_paths = {}
    for node, rule in allowed.items():
        sub = cfg.get(node) if isinstance(cfg, DictConfig) else None
        if node in COLLECTIONS:
            for name in (sub or {}):
                allowed_paths[f"{node}.{name}"] = rule
        else:
            allowed_paths[node] = rule
    for key, special, value in _find_special(cfg):
        if special != "_target_":
            _check_special(key, special, value, source)
            continue
        target = value
        rule = allowed_paths.get(key)
        where = f"{key}._target_={target!r} in {source}"
        if rule is None:
            raise ConfigError(f"{where} is refused: only the nodes {sorted(allowed)} may name a _target_.")
        prefixes, base_path = rule
        if not isinstance(target, str) or not (target.startswith(prefixes) or is_trusted(target, trusted)):
            raise ConfigError(f"{where} is refused: {key} may only name classes under {list(prefixes)} or in a "
                              f"trusted package.{how_to_trust(target, trusted, from_checkpoint)}")
        try:
            obj = _locate(target)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"{where} does not exist ({type(err).__name__}: {err}).") from None
        base = _locate(base_path)
        ok = (inspect.isclass(obj) and issubclass(obj, base)) or (target in functions and callable(obj))
        if not ok:
            raise ConfigError(f"{where} is refused: it is not a {base_path.rsplit('.', 1)[-1]} subclass.")


# Hydra's instantiate reads these keys besides `_target_`. dpm's configs use `_partial_: true` only where a
# constructor is finished later with what only the model knows (the optimizer's parameters, the schedule's
# optimizer); positional `_args_`, `_recursive_` and `_convert_` are never needed and are refused.
PARTIAL_NODES = ("optimizer", "lr_scheduler")
SPECIAL_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")


def _check_special(key: str, special: str, value: Any, source: str) -> None:
    where = f"{key + '.' if key else ''}{special}={value!r} in {source}"
    if special == "_partial_":
        if key not in PARTIAL_NODES or not isinstance(value, bool):
            raise ConfigError(f"{where} is refused: only {list(PARTIAL_NODES)} are partial constructors "
                              "(_partial_: true), and nothing else may be.")
        return
    raise ConfigError(f"{where} is refused: dpm's configs name a class with `_target_` and its keyword "
                      f"arguments only ({special} is never needed).")


def _find_special(node: Any, key: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key of the node, special key, its value) for every Hydra special key (SPECIAL_KEYS), at any depth."""
    found = []
    if isinstance(node, (DictConfig, ListConfig)) and (node._is_none() or node._is_missing()):
        return found
    if isinstance(node, DictConfig):
        items = node.items_ex(resolve=False)
    elif isinstance(node, ListConfig):
        items = [(str(i), v) for i, v in enumerate(node)]
    else:
        return found
    for k, v in items:
        if k in SPECIAL_KEYS:
            found.append((key, k, v))
        elif isinstance(v, (DictConfig, ListConfig)):
            found.extend(_find_special(v, f"{key}.{k}" if key else str(k)))
    return found


def resolved(cfg: DictConfig) -> DictConfig:
    """cfg with every interpolation resolved, as a plain config (its `hydra` node, if any, left out): what is checked
    is then exactly what is instantiated. Resolving runs only the resolvers OmegaConf, Hydra and dpm register, none of
    which imports or calls anything a config names; a value that resolves to a node with a `_target_` (oc.create,
    oc.decode) is then an ordinary node that check_targets refuses."""
    if "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # OmegaConf raises several types for a value that cannot be resolved
        raise ConfigError(f"the config cannot be resolved: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    out = OmegaConf.create(plain)
    OmegaConf.set_struct(out, OmegaConf.is_struct(cfg))
    return out


def check_data_only(config: Any, source: str, key: str = "") -> None:
    """A checkpoint's config is data: train.py saves it resolved, so an interpolation anywhere in it (a string with
    `${`: oc.create, oc.decode, a custom resolver, at any depth) can only be an attempt to have it resolved into
    something that runs. Refused before anything reads it."""
    if isinstance(config, dict):
        for k, v in config.items():
            if not isinstance(k, str) or "${" in k:
                raise ConfigError(f"{source} is refused: its config has the key {k!r} at {key or 'the top'}, which "
                                  "no config written by train.py has. Nothing from it was built.")
            check_data_only(v, source, f"{key}.{k}" if key else k)
    elif isinstance(config, (list, tuple)):
        for i, v in enumerate(config):
            check_data_only(v, source, f"{key}.{i}")
    elif isinstance(config, str) and "${" in config:
        raise ConfigError(f"{source} is refused: its config holds an interpolation at {key} ({config[:80]!r}); "
                          "train.py saves every value resolved, so a checkpoint never needs one. Nothing from it "
                          "was built.")


# ---- which keys each constructor takes ---------------------------------------------------------------------------
def accepted_keys(obj: Any) -> set[str] | None:
    """The keyword arguments obj (a class or function) accepts, following **kwargs up the class hierarchy;
    None when they cannot be known (a **kwargs that goes nowhere we can see)."""
    classes = inspect.getmro(obj) if inspect.isclass(obj) else (obj,)
    keys: set[str] = set()
    for cls in classes:
        fn = cls.__init__ if inspect.isclass(obj) else cls
        if inspect.isclass(obj) and "__init__" not in vars(cls):
            continue
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return None
        keys |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return keys
        if not inspect.isclass(obj) or cls.__module__.split(".")[0] != "dpm":
            return None  # a library's **kwargs: anything may be valid
    return None


def check_keys(cfg: DictConfig, nodes: tuple[str, ...] = ("dataset", "diffusion", "net", "optimizer",
                                                           "lr_scheduler")) -> None:
    """Every key of these `_target_` nodes must be an argument of the target (no silently ignored setting).
    Arguments that build() passes itself (T, schedule, data_shape, ...) must not be in the node either."""
    for node in nodes:
        sub = cfg.get(node)
        if not isinstance(sub, DictConfig) or "_target_" not in sub:
            continue
        keys = accepted_keys(_locate(sub._target_))
        if keys is None:
            continue
        given = {k for k in sub.keys() if not str(k).startswith("_")}
        unknown = sorted(given - keys)
        if unknown:
            name = sub._target_.rsplit(".", 1)[-1]
            valid = sorted(keys - {"T", "schedule", "data_shape", "n_outputs", "params"})
            raise ConfigError(f"{node}.{unknown[0]} is not a setting of {node} ({name}); its settings are "
                              f"{valid}. (Switching the {node} group can leave a key that only the other option "
                              f"takes: set it to the new option's keys, or drop it with ~{node}.{unknown[0]}.)")


# ---- numeric ranges ----------------------------------------------------------------------------------------------
def _int(lo: int | None = None, hi: int | None = None, allow: tuple = ()) -> Callable[[Any], str | None]:
    """The rule of an integer setting in [lo, hi] (dpm.ranges.integer_problem: the one rule of counts)."""
    return lambda v: None if (v in allow and not isinstance(v, bool)) else integer_problem(v, lo, hi)


def _real(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
          allow: tuple = ()) -> Callable[[Any], str | None]:
    """The rule of a real setting in the interval (dpm.ranges.real_problem)."""
    return lambda v: None if (v in allow and not isinstance(v, bool)) else real_problem(v, lo, hi, lo_open, hi_open)


PROB = _real(0, 1, lo_open=True, hi_open=True)
# The ranges of the settings no constructor checks itself; a data set's and the diffusion's own settings are checked
# by their constructors (dpm.data, dpm.core), which build() calls before anything is written (dpm.app.build).
TRAIN_RULES: dict[str, Callable[[Any], str | None]] = {
    "T": _int(2),
    "seed": _int(0),
    "val_n_t": _int(1),
    "test_n_t": _int(1),
    "test_exact_max_T": _int(0),
    "schedule.beta_1": PROB,
    "schedule.beta_T": PROB,
    "schedule.step1_beta": PROB,
    "schedule.max_beta": PROB,
    "schedule.s": _real(0, lo_open=True),
    "schedule.n_basis": _int(1),
    "optimizer.lr": _real(0, lo_open=True),
    "optimizer.weight_decay": _real(0),
    "optimizer.eps": _real(0, lo_open=True),
    "optimizer.alpha": _real(0, 1),
    "optimizer.momentum": _real(0),
    "lr_scheduler.every": _int(1),
    "lr_scheduler.factor": _real(0, 1, lo_open=True),
    "lr_scheduler.floor": _real(0),
    "lr_scheduler.total_steps": _int(1, allow=(None,)),
    "lr_scheduler.warmup_steps": _int(0),
    "trainer.max_steps": _int(1),
    "trainer.val_check_interval": _real(0, lo_open=True, allow=(None,)),
    "trainer.log_every_n_steps": _int(1),
    "trainer.gradient_clip_val": _real(0, lo_open=True, allow=(None,)),
    "trainer.num_sanity_val_steps": _int(0),
    "trainer.accumulate_grad_batches": _int(1),
    "callbacks.ema.decay": _real(0, 1, hi_open=True),
    "callbacks.figure.every_n_val": _int(0),
    "callbacks.overfitting.patience": _int(1),
    "callbacks.early_stop.patience": _int(1),
    "test_weights": lambda v: None if v in ("best", "last") else "must be best or last",
    "t_sampling": lambda v: None if v in ("uniform", "importance") else "must be uniform or importance",
    "progress_bar_every": _int(1),
}
EVAL_RULES: dict[str, Callable[[Any], str | None]] = {  # the settings evaluate.py's tasks share (each task checks
    "batch_size": _int(1),                                # its own: dpm.tasks)
    "seed": _int(0),
    "devices": _int(1),  # processes of evaluate.py's Fabric (on each node)
    "num_nodes": _int(1),  # nodes of `devices` processes each (torchrun, srun)
}
DEVICE_VALUES = "a positive integer, a list of device indices, or 'auto'"


def check_ranges(cfg: DictConfig, rules: dict[str, Callable[[Any], str | None]]) -> None:
    """Apply each rule to its key where the config has it."""
    for key, rule in rules.items():
        value = OmegaConf.select(cfg, key, default="__absent__", throw_on_missing=False)
        if isinstance(value, str) and value == "__absent__":
            continue
        problem = rule(value)
        if problem:
            raise ConfigError(f"{key}={value!r} is invalid: it {problem}")
    if (beta_1 := OmegaConf.select(cfg, "schedule.beta_1")) is not None and beta_1 >= 0.5:
        raise ConfigError(f"schedule.beta_1={beta_1} is invalid: the first step's variance fixes the last reverse "
                          "step p(x0|x1); at >= 0.5 it erases most of the data and nothing can be learned. Use a "
                          "small value (the Swiss roll preset uses 1e-5 or 1e-6).")
    devices = OmegaConf.select(cfg, "trainer.devices")  # the Trainer's devices (evaluate.py's: EVAL_RULES)
    if devices is not None and not (devices == "auto" or isinstance(devices, ListConfig)
                                    or (isinstance(devices, int) and not isinstance(devices, bool)
                                        and (devices >= 1 or devices == -1))):
        raise ConfigError(f"trainer.devices={devices!r} is invalid: use {DEVICE_VALUES}.")


def check_train_config(cfg: DictConfig) -> None:
    """Everything train.py can check before building: targets, keys, numeric ranges, known-bad combinations; on the
    resolved config, which is what build() instantiates."""
    cfg = resolved(cfg)
    check_targets(cfg)
    check_ranges(cfg, TRAIN_RULES)
    check_keys(cfg)
    scheduler = str(OmegaConf.select(cfg, "lr_scheduler._target_", default=""))
    if scheduler.endswith("ReduceLROnPlateau") and not OmegaConf.select(cfg, "trainer.check_val_every_n_epoch"):
        raise ConfigError("lr_scheduler=plateau is stepped after each validation, which must come every few epochs: "
                          "set trainer.check_val_every_n_epoch=N and trainer.val_check_interval=1.0")
    target = OmegaConf.select(cfg, "diffusion._target_")
    if target and OmegaConf.select(cfg, "schedule.learned", default=False):
        kind = _locate(target)  # the kind says whether its schedule can be learned
        if kind.fixed_schedule:
            raise ConfigError(f"schedule.learned=true is refused with {kind.kind} diffusion: {kind.fixed_schedule}")
