"""train(cfg, out_dir) and evaluate(cfg, out_dir): build everything from a composed config and run it.

No Hydra runtime is needed here (train.py / evaluate.py pass the run directory), so tests call these directly.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from dpm.bound import ESTIMATORS, mean_and_stderr
from dpm.data.base import SPLITS, DataModule
from dpm.figures import draw
from dpm.module import DiffusionModule
from dpm.paper import TABLE1
from dpm.truth import truth_fields

TASKS = ("bound", "sample")
WEIGHTS = ("auto", "raw", "ema")


def check_config(cfg: DictConfig) -> None:
    """Fail before any work on settings that cannot run."""
    T = cfg.get("T")
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"T={T!r} is invalid: the number of diffusion steps must be an integer >= 2")


def build(cfg: DictConfig, datamodule_state: dict | None = None) -> tuple[DataModule, DiffusionModule]:
    """The data module (set up) and the LightningModule a config describes."""
    check_config(cfg)
    dm: DataModule = instantiate(cfg.dataset)
    schedule = instantiate(cfg.schedule, T=cfg.T)
    diffusion = instantiate(cfg.diffusion, schedule=schedule)
    if datamodule_state is not None:
        dm.load_state_dict(datamodule_state)
    dm.prepare_data()
    dm.setup()
    diffusion.check_data(dm.splits["train"])
    net = instantiate(cfg.net, data_shape=dm.data_shape, n_outputs=diffusion.n_outputs, T=cfg.T)
    module = DiffusionModule(
        net, diffusion, optimizer=instantiate(cfg.optimizer),
        lr_scheduler=instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None,
        units_per_example=dm.units_per_example, unit=dm.unit, val_n_t=cfg.val_n_t,
        run_config=OmegaConf.to_container(cfg, resolve=True))
    if cfg.get("compile"):
        module.net = torch.compile(module.net)  # the network only; checkpoints load into an uncompiled one
    return dm, module


def _children(node: DictConfig | None) -> list:
    """Instantiate each named `_target_` child of a dict node (callbacks, loggers), skipping nulls."""
    return [instantiate(child) for child in (node or {}).values() if child is not None]


def train(cfg: DictConfig, out_dir: str | Path) -> dict[str, float]:
    """Fit the model of cfg, writing checkpoints, logs, figures and the resolved config into out_dir."""
    out_dir = Path(out_dir)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.out_dir = str(out_dir)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} (to resume from) is not a file")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    dm, module = build(cfg)  # checks the config before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(module.run_config, out_dir / "config.yaml")
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=_children(cfg.get("callbacks")),
                                     logger=_children(cfg.get("logger")) or False)
    for logger in trainer.loggers:  # the resolved config beside the metrics (hparams.yaml, W&B config)
        logger.log_hyperparams(module.run_config)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    finally:
        if any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers):
            import wandb

            wandb.finish()  # or every job of a multirun logs into one W&B run
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def load_checkpoint(path: str | Path | None) -> dict:
    """A dpm checkpoint as a dict, with a clear error for a missing, unreadable or foreign file."""
    if path is None or str(path) in ("", "???"):
        raise ValueError("ckpt_path is required: python evaluate.py ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={path} is not a file (train.py writes <run dir>/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or non-checkpoint files
        raise ValueError(f"ckpt_path={path} could not be read as a checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "dpm_config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"ckpt_path={path} is not a dpm checkpoint (no dpm_config / state_dict in it)")
    return ckpt


def restore(ckpt: dict, weights: str = "auto") -> tuple[DataModule, DiffusionModule, str]:
    """Rebuild data module and model from a checkpoint; returns them and which weights were loaded."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r} is unknown; valid choices: {list(WEIGHTS)}")
    cfg = OmegaConf.create(ckpt["dpm_config"])
    dm_state = next((v for k, v in ckpt.items() if k.endswith("DataModule")), None)
    dm, module = build(cfg, dm_state)
    has_ema = "current_model_state" in ckpt  # Lightning's EMAWeightAveraging keeps the raw weights there
    if weights == "ema" and not has_ema:
        raise ValueError("weights=ema but the checkpoint holds no EMA weights (train with callbacks=ema)")
    use_raw_copy = has_ema and weights == "raw"
    state = {"state_dict": ckpt["current_model_state"] if use_raw_copy else ckpt["state_dict"]}
    module.on_load_checkpoint(state)
    module.load_state_dict(state["state_dict"])
    return dm, module, "ema" if has_ema and not use_raw_copy else "raw"


def evaluate(cfg: DictConfig, out_dir: str | Path) -> dict:
    """task=bound: K on a split, written to out_dir/eval.json and printed beside the paper's Table 1.
    task=sample: a figure of samples with a fixed seed in out_dir."""
    out_dir = Path(out_dir)
    if cfg.task not in TASKS:
        raise ValueError(f"task={cfg.task!r} is unknown; valid choices: {list(TASKS)}")
    if cfg.estimator not in ESTIMATORS:
        raise ValueError(f"estimator={cfg.estimator!r} is unknown; valid choices: {list(ESTIMATORS)}")
    if cfg.split not in SPLITS:
        raise ValueError(f"split={cfg.split!r} is unknown; valid choices: {list(SPLITS)}")
    ckpt = load_checkpoint(None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path)
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dm, module, weights = restore(ckpt, cfg.weights)
    module.to(device).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.task == "sample":
        path = draw(module, dm, out_dir / "samples.png", cfg.seed)
        print(f"wrote {path}")
        return {"figure": str(path)}
    return bound(module, dm, cfg, out_dir, weights, device)


def bound(module: DiffusionModule, dm: DataModule, cfg: DictConfig, out_dir: Path, weights: str,
          device: torch.device) -> dict:
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    Ks, L_nulls, truths, seen = [], [], [], 0
    with torch.no_grad():
        for (x0,) in dm.loader(cfg.split, cfg.batch_size):
            if cfg.limit is not None and seen >= cfg.limit:
                break
            x0 = dm.dequantize(x0[: None if cfg.limit is None else cfg.limit - seen].to(device))
            K, L_null = module.bound(x0, cfg.estimator, cfg.n_t)
            Ks.append(K.cpu())
            L_nulls.append(L_null.cpu())
            truth = dm.true_log_likelihood(x0)  # nats per example, None where the density is unknown
            if truth is not None:
                truths.append(module.to_units(truth.cpu()))
            seen += len(x0)
    K, L_null = torch.cat(Ks), torch.cat(L_nulls)
    K_mean, K_se = mean_and_stderr(K)
    gain_mean, gain_se = mean_and_stderr(K - L_null)
    n_dims = math.prod(dm.data_shape)
    K_bpd = K_mean * dm.units_per_example / n_dims
    result = {
        "dataset": dm.name, "diffusion": module.diffusion.kind, "T": module.diffusion.T, "split": cfg.split,
        "estimator": cfg.estimator, "n_t": cfg.n_t if cfg.estimator == "mc" else module.diffusion.T - 1,
        "n_examples": int(K.numel()), "K": K_mean, "K_stderr": K_se, "L_null": L_null.double().mean().item(),
        "K_minus_L_null": gain_mean, "K_minus_L_null_stderr": gain_se, "unit": dm.unit,
        "K_bits_per_dim": K_bpd, "weights": weights, "seconds": time.perf_counter() - start,
        "checkpoint": str(cfg.ckpt_path),
    }
    nll8 = dm.nll_bits_per_dim_8bit(K_bpd)
    if nll8 is not None:
        result["nll_bits_per_dim_8bit"] = nll8
    result.update(dm.eval_info())
    if truths:  # DESIGN.md contract 9: the truth beside K, and the gap with its paired standard error
        result.update(truth_fields(K, torch.cat(truths)))
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    print(f"wrote {out_dir / 'eval.json'}")
    return result


def format_table(r: dict) -> str:
    """The result beside the paper's Table 1 value, as a short text table."""
    paper = TABLE1.get(r["dataset"], {})
    ref = lambda key: f"{paper[key]:>10.3f}" if key in paper else f"{'-':>10}"  # noqa: E731
    lines = [
        f"{r['dataset']}: {r['diffusion']} diffusion, T={r['T']}, {r['split']} split, {r['estimator']} estimator, "
        f"{r['n_examples']} examples, {r['weights']} weights, {r['seconds']:.1f} s",
        f"{'':<16}{'ours':>22}{'paper':>12}   unit",
        f"{'K':<16}{r['K']:>12.3f} ± {r['K_stderr']:<7.3f}{ref('K'):>12}   {r['unit']}",
        f"{'K - L_null':<16}{r['K_minus_L_null']:>12.3f} ± {r['K_minus_L_null_stderr']:<7.3f}"
        f"{ref('K_minus_L_null'):>12}   {r['unit']}",
        f"{'L_null':<16}{r['L_null']:>12.3f}{'':>22}   {r['unit']}",
        f"{'K per dim':<16}{r['K_bits_per_dim']:>12.4f}{'':>22}   bits/dim",
    ]
    if "nll_bits_per_dim_8bit" in r:
        lines.append(f"{'NLL 8-bit':<16}{r['nll_bits_per_dim_8bit']:>12.4f}{'':>22}   bits/dim (lower is better)")
    return "\n".join(lines)
