"""Building the model: from a composed config, or from a checkpoint's own config (the one place for both)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from dpm.app.checkpoint import WEIGHTS
from dpm.app.checks import _locate, check_keys, check_train_config, resolved
from dpm.app.contracts import check_datamodule_class, check_net, check_net_class, check_splits
from dpm.app.trust import TRUST_KEY
from dpm.data.base import DataModule
from dpm.errors import ConfigError
from dpm.model.module import DiffusionModule


def build(cfg: DictConfig, datamodule_state: dict | None = None) -> tuple[DataModule, DiffusionModule]:
    """The data module (set up) and the LightningModule a config describes (instantiated from its resolved copy, the
    one check_train_config checks)."""
    check_train_config(cfg)
    cfg = resolved(cfg)
    dm: DataModule = _build("dataset", cfg.dataset)
    check_datamodule_class(dm)
    if datamodule_state is not None:
        dm.load_state_dict(datamodule_state)
    # Processes started together (torchrun, SLURM) would race on a download or a cache: one at a time; the
    # first prepares, the others find the files there.
    key = hashlib.sha1(json.dumps(OmegaConf.to_container(cfg.dataset, resolve=True), sort_keys=True,
                                  default=str).encode()).hexdigest()[:16]
    try:
        with FileLock(Path(tempfile.gettempdir()) / f"dpm-prepare-{key}.lock"):
            dm.prepare_data()
        dm.setup()
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:  # the data's files or settings
        raise ConfigError(str(err)) from None  # (their messages name the file or key); anything else is a failure
    check_splits(dm)
    try:
        cfg = with_fitted_prior(cfg, dm)
    except ValueError as err:  # the kind refuses data it cannot fit its settings to
        raise ConfigError(f"{dm.origin}: {err}") from None
    schedule = _build("schedule", cfg.schedule, T=cfg.T)
    diffusion = _build("diffusion", cfg.diffusion, schedule=schedule)
    try:
        diffusion.check_data(dm.splits["train"])
    except ValueError as err:
        raise ConfigError(f"{dm.origin}: {err}") from None
    check_net_class(_locate(cfg.net._target_))
    net = _build("net", cfg.net, data_shape=dm.data_shape, n_outputs=diffusion.n_outputs, T=cfg.T)
    check_net(net, diffusion.n_outputs, dm, cfg.T)
    module = DiffusionModule(
        net, diffusion, optimizer=_build("optimizer", cfg.optimizer),
        lr_scheduler=_build("lr_scheduler", cfg.lr_scheduler) if cfg.get("lr_scheduler") else None,
        units_per_example=dm.kind.units_per_example, unit=dm.kind.unit, val_n_t=cfg.val_n_t,
        run_config=OmegaConf.to_container(cfg, resolve=True), seed=cfg.get("seed") or 0, dequantize=dm.dequantize,
        dequantization_width=dm.kind.dequantization_width, compile=bool(cfg.get("compile")),
        t_sampling=cfg.get("t_sampling", "uniform"))
    if cfg.get("compile"):
        # in place, for evaluation, validation and sampling (training compiles its whole loss, the module's
        # compile): the network module stays itself, so its state_dict keys stay those of a plain one
        module.net.compile()
    return dm, module


def _build(node: str, sub: DictConfig, **kwargs: Any) -> Any:
    """instantiate(sub), a constructor's refusal of one of its settings (a ValueError or TypeError) turned into a
    ConfigError that names the node's full key (its constructor is the one place that checks the setting)."""
    try:
        return instantiate(sub, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if not isinstance(cause, (ValueError, TypeError)):
            raise
        message = str(cause)
        if not message.startswith((f"{node}.", f"{node} ", "T=")):
            message = f"{node} ({sub._target_.rsplit('.', 1)[-1]}): {message}"
        raise ConfigError(message) from cause


def with_fitted_prior(cfg: DictConfig, dm: DataModule) -> DictConfig:
    """cfg with the diffusion's settings that it leaves to the data (null) fitted to the training split by the kind
    itself (Diffusion.fitted: the binomial prior's p, ...), recorded in the run's config."""
    settings = OmegaConf.to_container(cfg.diffusion, resolve=True)
    fitted = _locate(cfg.diffusion._target_).fitted(settings, dm.splits["train"], dm.kind.classes)
    if not fitted:
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        for key, value in fitted.items():
            cfg.diffusion[key] = value
    return cfg


def checkpoint_config(ckpt: dict) -> Any:
    """The checkpoint's run config as a DictConfig, its keys checked against the constructors."""
    cfg = OmegaConf.create(ckpt["dpm_config"])
    check_keys(cfg)
    return cfg


def restore(ckpt: dict, weights: str = "auto", trusted: tuple[str, ...] = ()):
    """Rebuild data module and model from a checkpoint (checked by load_checkpoint with the same `trusted`, the
    packages the command trusts: the checkpoint's own record of what it trusted is never used); returns (dm,
    module, which weights were loaded)."""
    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r} is unknown; valid choices: {list(WEIGHTS)}")
    cfg = checkpoint_config(ckpt)
    with open_dict(cfg):
        cfg[TRUST_KEY] = list(trusted)
    dm_state = next((v for k, v in ckpt.items() if k.endswith("DataModule")), None)
    dm, module = build(cfg, dm_state)
    has_ema = "current_model_state" in ckpt  # Lightning's EMAWeightAveraging keeps the raw weights there
    if weights == "ema" and not has_ema:
        raise ConfigError("weights=ema but the checkpoint holds no EMA weights (train with callbacks=ema)")
    use_raw_copy = has_ema and weights == "raw"
    state = {"state_dict": ckpt["current_model_state"] if use_raw_copy else ckpt["state_dict"]}
    module.on_load_checkpoint(state)
    try:
        missing, unexpected = module.load_state_dict(state["state_dict"], strict=False)
    except RuntimeError as err:  # a tensor of another shape than the network's
        first = str(err).strip().splitlines()[-1].strip()
        raise ConfigError(f"the checkpoint's weights do not fit the network its config describes ({first[:300]})") from None
    if missing or unexpected:
        raise ConfigError(f"the checkpoint's weights do not fit the network its config describes (missing "
                          f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]})")
    return dm, module, "ema" if has_ema and not use_raw_copy else "raw"
