"""Which weights a run's bound reports: `test_weights=best` (the checkpoint with the highest validation K, written
by the checkpoint callback; with callbacks=ema the EMA weights of that step) or `last` (the final weights). The test
bound at the end of training and evaluate.py's default (`ckpt_choice=run`) both use the run's choice, and eval.json
says which weights they were and their step (weights_chosen, weights_step, weights_val_K)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dpm.errors import ConfigError
from dpm.model.callbacks import OverfittingMonitor
from dpm.model.module import DiffusionModule

TEST_WEIGHTS = ("best", "last")
CKPT_CHOICES = ("run", "given")
MONITOR = "val/K"


def best_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The checkpoint callback that keeps the best checkpoint by val/K (callbacks.checkpoint), if the run has one."""
    return next((cb for cb in trainer.checkpoint_callbacks
                 if isinstance(cb, ModelCheckpoint) and cb.monitor == MONITOR and cb.mode == "max"), None)


def load_reported_weights(choice: str, trainer: L.Trainer, module: DiffusionModule, last: Path) -> dict:
    """Put the weights `choice` (test_weights) names into module; eval.json's fields that say which they are:
    weights_chosen ("best validation" or "last"), weights_step, weights_val_K (best) and checkpoint."""
    callback = best_callback(trainer) if choice == "best" else None
    path = Path(callback.best_model_path) if callback is not None and callback.best_model_path else None
    if path is None or not path.is_file():
        why = "" if choice == "last" else " (no validation ran, or no checkpoint callback keeps the best)"
        return {"weights_chosen": "last" + why, "weights_step": int(trainer.global_step), "checkpoint": str(last)}
    ckpt = torch.load(path, map_location=module.device, weights_only=True)
    module.load_state_dict({k.replace("._orig_mod", ""): v for k, v in ckpt["state_dict"].items()})
    return {"weights_chosen": "best validation", "weights_step": int(ckpt["global_step"]),
            "weights_val_K": float(callback.best_model_score), "checkpoint": str(path)}


def validation_record(trainer: L.Trainer) -> dict:
    """eval.json's record of val/K over the run (best, last, falls) and whether it overfit, from the
    OverfittingMonitor callback; {} without one."""
    monitor = next((cb for cb in trainer.callbacks if isinstance(cb, OverfittingMonitor)), None)
    summary = monitor.summary() if monitor is not None else None
    return summary or {}


def best_of_run(ckpt: dict, given: Path) -> tuple[Path, dict]:
    """The checkpoint evaluate.py's ckpt_choice=run evaluates for the checkpoint `ckpt` read from `given`, and the
    fields that say so: when the run reports its best weights (test_weights=best), its best validation checkpoint,
    found beside `given` (so a moved run directory still works): of the checkpoints there that were the run's best
    when written, the one with the highest val/K. (A `last.ckpt` names the best as it stood before its own
    validation was ranked, Lightning ranking checkpoints last, so the files are asked rather than it.) Otherwise
    `given` itself."""
    if ckpt["dpm_config"].get("test_weights", "last") != "best":
        return given, {"weights_chosen": "given", "weights_step": int(ckpt.get("global_step", 0))}
    found = [(score, path) for path in given.parent.glob("*.ckpt")
             if path != given and (score := _best_score(path)) is not None]
    if found:
        score, best = max(found)
        return best, {"weights_chosen": "best validation", "weights_val_K": score}
    if not any(_monitor_states(ckpt)):  # no validation had run when this checkpoint was written
        return given, {"weights_chosen": "given (its run had no best validation checkpoint yet)",
                       "weights_step": int(ckpt.get("global_step", 0))}
    raise ConfigError(f"ckpt_path={given}: its run reports the best validation weights (test_weights=best), but no "
                      f"best checkpoint of it is beside it in {given.parent}. Evaluate the given file itself with "
                      "ckpt_choice=given, or give the best checkpoint's path")


def _monitor_states(ckpt: dict) -> list[dict]:
    """The states of the checkpoint callbacks that rank by val/K, with a best checkpoint recorded."""
    return [v for k, v in (ckpt.get("callbacks") or {}).items()
            if k.startswith("ModelCheckpoint") and f"'monitor': '{MONITOR}'" in k and isinstance(v, dict)
            and v.get("best_model_path")]


def _best_score(path: Path) -> float | None:
    """val/K of the checkpoint at path if it was the run's best when written (its own checkpoint callback's state
    names it as the best), else None; read as data (weights_only, memory-mapped: the weights are not loaded)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a checkpoint (or not one we can read): not a candidate
        return None
    for state in _monitor_states(ckpt) if isinstance(ckpt, dict) else []:
        if Path(str(state["best_model_path"])).name == path.name and state.get("best_model_score") is not None:
            return float(state["best_model_score"])
    return None
