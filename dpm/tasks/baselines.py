"""The baselines beside K in eval.json and the printed table (docs/contracts.md, contract 12): fitted on the data
module's training split, chosen on its validation split, scored on the very examples the bound was computed on.

Real vectors: one full-covariance Gaussian, and scikit-learn's GaussianMixture (full covariances) with its number
of components (1..MAX_COMPONENTS) chosen by the validation split's log-likelihood. 0/1 sequences: independent
Bernoulli bits and a first-order Markov chain (dpm.core.baselines). Images get none. The best baseline is the one
with the highest validation log-likelihood, and `K - best baseline` is the mean of the paired per-example
differences, with their standard error.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import torch

from dpm.core import baselines as fit
from dpm.core.stats import mean_and_stderr
from dpm.data.base import DataModule

MAX_COMPONENTS = 10
LABELS = {"gaussian": "Gaussian", "gaussian_mixture": "GMM", "bernoulli": "Bernoulli", "independent": "independent",
          "markov": "Markov chain"}


def gaussian_mixture(train: torch.Tensor, val: torch.Tensor, seed: int, max_components: int = MAX_COMPONENTS):
    """The GaussianMixture (full covariances, scikit-learn) with 1..max_components components whose mean
    validation log-likelihood is highest, fitted to train [N, D]; k stops growing once two more components in a row
    did not help. Returns (the fitted mixture, a function x [M, D] -> nats float64 [M])."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x, v = train.double().numpy(), val.double().numpy()
    best, best_score, worse = None, -math.inf, 0
    for k in range(1, min(max_components, len(x)) + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = GaussianMixture(k, covariance_type="full", reg_covar=fit.RIDGE, random_state=seed).fit(x)
        score = float(model.score(v))
        if score > best_score:
            best, best_score, worse = model, score, 0
        else:
            worse += 1
            if worse == 2:
                break
    return best, lambda y: torch.from_numpy(best.score_samples(np.asarray(y.double().numpy())))


def fitted(dm: DataModule) -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], dict]]:
    """name -> (log-likelihood function x [M, *D] -> nats [M], facts to record) for the data's kind; {} for
    images and other data."""
    dm.setup()
    kind = dm.kind  # dpm.data.base.DataKind
    train, val = dm.splits["train"].flatten(1), dm.splits["val"].flatten(1)
    if kind.data == "vectors":
        # fitted to each column at unit variance whatever the model's scaling (dataset.scaling), so the ridge means
        # the same for every column and the baselines' log-likelihood in the file's units does not depend on it
        centre, spread = train.double().mean(0), train.double().std(0, unbiased=False).clamp_min(1e-300)
        standard = lambda y: (y.double().flatten(1) - centre) / spread  # noqa: E731
        log_det = spread.log().sum()
        mean, cov = fit.gaussian_fit(standard(train))
        mixture, mixture_log_prob = gaussian_mixture(standard(train), standard(val), dm.seed)
        return {"gaussian": (lambda x: fit.gaussian_log_prob(standard(x), mean, cov) - log_det, {}),
                "gaussian_mixture": (lambda x: mixture_log_prob(standard(x)) - log_det,
                                     {"n_components": int(mixture.n_components)})}
    if kind.data == "sequence" and kind.classes is not None:
        C = kind.classes
        probs = fit.independent_fit(train, C)
        first, transitions = fit.markov_fit(train, C)
        return {"bernoulli" if C == 2 else "independent": (lambda x: fit.independent_log_prob(x, probs), {}),
                "markov": (lambda x: fit.markov_log_prob(x, first, transitions), {})}
    return {}


def baseline_fields(dm: DataModule, split: str, index: torch.Tensor, K: torch.Tensor,
                    log2_jacobian: float | None) -> dict:
    """eval.json's baseline keys for the examples `index` [N] of `split` whose bound is K [N] (the reporting unit):
    `baselines` (name -> log_likelihood and its stderr over the same examples, val_log_likelihood, and
    log_likelihood_raw in the data's own units where K_raw is reported), `best_baseline` (by validation) and
    `K_minus_best_baseline` with its paired standard error. {} where the data have no baseline."""
    models = fitted(dm)
    if not models:
        return {}
    to_units = 1.0 / (math.log(2) * dm.kind.units_per_example)
    x = dm.splits[split][index.long().cpu()].flatten(1)
    val = dm.splits["val"].flatten(1)
    out, per_example = {}, {}
    for name, (log_prob, facts) in models.items():
        values = log_prob(x) * to_units
        mean, se = mean_and_stderr(values, ddof=1)
        entry = {"log_likelihood": mean, "stderr": se,
                 "val_log_likelihood": log_prob(val).mean().item() * to_units, **facts}
        if log2_jacobian is not None:
            entry["log_likelihood_raw"] = mean - log2_jacobian
        out[name], per_example[name] = entry, values
    best = max(out, key=lambda name: out[name]["val_log_likelihood"])
    gap, gap_se = mean_and_stderr(K.double().cpu() - per_example[best], ddof=1)
    return {"baselines": out, "best_baseline": best, "K_minus_best_baseline": gap,
            "K_minus_best_baseline_stderr": gap_se}


def baseline_lines(r: dict) -> list[str]:
    """The printed table's lines for the baselines of an eval.json result r (none where it has none)."""
    if "baselines" not in r:
        return []
    raw = "K_raw" in r  # the data's own units, beside K_raw
    lines = []
    for name, b in r["baselines"].items():
        label = LABELS.get(name, name) + (f" (k={b['n_components']})" if "n_components" in b else "")
        value = b["log_likelihood_raw"] if raw else b["log_likelihood"]
        lines.append(_row(label, value, b["stderr"], r["unit"] + (" (raw data)" if raw else "")))
    best = LABELS.get(r["best_baseline"], r["best_baseline"])
    lines.append(_row("K - best baseline", r["K_minus_best_baseline"], r["K_minus_best_baseline_stderr"],
                      f"{r['unit']} (best on validation: {best})"))
    return lines


def _row(label: str, value: float, se: float, unit: str) -> str:
    """A line of the printed table: the number's end at column 28, as the table's own lines."""
    number = f"{value:.3f}"
    return f"{label.ljust(max(len(label) + 1, 28 - len(number)))}{number} ± {se:<7.3f}{'':>12}   {unit}"
