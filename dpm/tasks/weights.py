"""What eval.json and the printed table say about the weights a bound used (which ones, their step; with
test_weights=best the best validation checkpoint) and about the run's validation K (overfitting)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def chosen_fields(cfg: DictConfig) -> dict:
    """evaluate.py's record of the checkpoint it chose (dpm.app.evaluate.choose_checkpoint): weights_chosen,
    weights_step, weights_val_K."""
    chosen = cfg.get("weights_chosen")
    return OmegaConf.to_container(chosen) if isinstance(chosen, DictConfig) else {}


def weights_lines(r: dict) -> list[str]:
    """The printed table's lines on the weights (which, their step) and on overfitting, for an eval.json result r."""
    lines = []
    if "weights_chosen" in r:
        val = f", val/K {r['weights_val_K']:.3f}" if r.get("weights_val_K") is not None else ""
        lines.append(f"{'weights':<16}{r.get('weights', 'raw')}, {r['weights_chosen']}, step {r['weights_step']}{val}")
    if r.get("overfitting"):
        lines.append(f"{'overfitting':<16}after its best ({r['val_K_best']:.3f}, step {r['val_K_best_step']}) val/K "
                     f"fell at {r['val_K_falls']} validations in a row; {r['val_K_last']:.3f} at step "
                     f"{r['val_K_last_step']}")
    return lines
