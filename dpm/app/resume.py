"""Resuming with a command's settings: what defines the model and its data must match the checkpoint, what a
user may change mid-run (learning rate, budget, validation interval, loggers, devices) is applied for real.

Lightning restores the optimizer's and scheduler's saved hyperparameters over the new ones;
dpm.model.optim.patch_optimizer_state writes the command's values into the checkpoint before that happens, so
config.yaml states what actually runs.
"""

from __future__ import annotations

from typing import Any

from dpm.app.checks import _locate
from dpm.errors import ConfigError

# Keys (or key prefixes) a resumed run may change; every other difference is refused. Where the data live may
# change too: the keys the checkpoint's data set names in its `location_keys` (dpm.data.base.DataModule).
MUTABLE = ("optimizer", "lr_scheduler", "trainer", "callbacks", "logger", "val_n_t", "compile", "tf32", "ckpt_path",
           "out_dir", "progress", "progress_bar_every", "test_at_end", "test_exact_max_T", "test_n_t", "latest_link",
           "trust", "dataset.batch_size", "dataset.eval_batch_size", "dataset.num_workers", "test_weights",
           "t_sampling")
FIXED_WITHIN_MUTABLE = ("optimizer._target_",)  # another optimizer's state cannot be continued
FITTED = "diffusion."  # a kind's setting given as null is fitted to the data (Diffusion.fitted, dpm.app.build): the
# checkpoint holds the fitted value, and the same data give it again


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": value} for a nested dict / list container."""
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    if isinstance(d, list) and d and all(isinstance(v, (dict, list)) for v in d):
        out = {}
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: d}


def differences(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, command's value) for every leaf that differs; absent is shown as '(absent)'."""
    a, b = flatten(old), flatten(new)
    absent = "(absent)"
    return [(k, a.get(k, absent), b.get(k, absent)) for k in sorted(set(a) | set(b)) if a.get(k, absent) != b.get(k, absent)]


def location_keys(cfg: dict) -> tuple[str, ...]:
    """dataset.<key> for each key the config's data set class names as saying where its data live."""
    target = (cfg.get("dataset") or {}).get("_target_")
    try:
        keys = _locate(target).location_keys if isinstance(target, str) else ()
    except (ImportError, AttributeError):
        keys = ()
    return tuple(f"dataset.{k}" for k in keys)


def is_mutable(key: str, also: tuple[str, ...] = ()) -> bool:
    """key is one of MUTABLE (or `also`) or below one of them (and not one of FIXED_WITHIN_MUTABLE)."""
    return key not in FIXED_WITHIN_MUTABLE and any(key == m or key.startswith(m + ".") for m in MUTABLE + also)


def check_resume(old: dict, new: dict, ckpt_path: str) -> list[tuple[str, Any, Any]]:
    """Refuse changes to what defines the model and data; return the changes that will be applied. old's
    targets were checked (load_checkpoint) before its data set class is looked up here."""
    diffs = [d for d in differences(old, new) if not (d[0].startswith(FITTED) and d[2] is None)]
    also = location_keys(old)
    refused = [d for d in diffs if not is_mutable(d[0], also)]
    if refused:
        lines = "; ".join(f"{k}: {o!r} in the checkpoint, {n!r} now" for k, o, n in refused[:12])
        more = f" (and {len(refused) - 12} more)" if len(refused) > 12 else ""
        raise ConfigError(
            f"resume from ckpt_path={ckpt_path} refused: these settings define the model or its data and differ "
            f"from the checkpoint's: {lines}{more}. Drop those overrides to continue that run, or start a new run "
            f"without ckpt_path. (Changeable on resume: {', '.join(MUTABLE[:6])}, ...)")
    return [d for d in diffs if d[0] not in ("ckpt_path", "out_dir")]
