"""How tight the bound is on your own data at the defaults: data sets whose log-likelihood is known in closed form,
and two small real tables beside the project's baselines, each trained with the command a user types
(`python train.py dataset=array dataset.path=FILE`, plus `diffusion=binomial schedule=binomial` for 0/1 sequences).

    python scripts/own_data_measure.py [--out DIR] [--sets gauss2d,gauss8d,...] [--settings after|before]
                                       [--n 20000] [--tag NAME] [--set KEY=VALUE ...]

Writes the data files into DIR/data (once), trains each set into DIR/<tag>/<set>, then prints one table: the test
split's K_raw (the file's units) beside the truth, the paired difference K - truth, the best baseline of eval.json,
the wall time and the machine's load. `--settings before` trains with the settings dataset=array had before the own-
data defaults were chosen (one global scale, T = 40, 4,000 steps, the last weights); `--set` adds any override (a
search: `--set T=200 --set schedule=cosine`). Times are wall-clock and include the test bound; run it alone:
    flock /tmp/dpm-measure.lock python scripts/own_data_measure.py

The truth of the generated sets is computed here from their generating distributions, independently of dpm (scipy
for the Gaussians and the mixture, Simpson's rule over the roll's parameter for the Swiss roll, the product of
Bernoulli / Markov probabilities for the bits); the per-example bound is recomputed from the weights eval.json used
(the same keyed draws, so the same K) so that K - truth is paired per example.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import special, stats

ROOT = Path(__file__).resolve().parents[1]
LN2 = math.log(2)

# ---- the data sets: each draws its examples and computes their true log-likelihood (nats) -------------------------
MEAN2, COV2 = np.array([1.0, -2.0]), np.array([[2.0, 0.8], [0.8, 1.0]])
SCALES8 = 10.0 ** np.linspace(-2, 2, 8)  # columns in units from 0.01 to 100, as real tables have
COV8 = np.array([[0.8 ** abs(i - j) for j in range(8)] for i in range(8)]) * np.outer(SCALES8, SCALES8)
MEAN8 = np.linspace(-5, 5, 8) * SCALES8
MIX_K, MIX_RADIUS, MIX_STD = 8, 3.0, 0.3  # 8 equal modes on a circle, 7.6 standard deviations apart
MIX_MEANS = MIX_RADIUS * np.stack([np.cos(2 * np.pi * np.arange(MIX_K) / MIX_K),
                                   np.sin(2 * np.pi * np.arange(MIX_K) / MIX_K)], 1) + np.array([10.0, -4.0])
ROLL_NOISE, ROLL_T = 0.5, (1.5 * np.pi, 4.5 * np.pi)
BITS_P = np.linspace(0.05, 0.95, 20)  # each position's own P(1)
MARKOV_FIRST, MARKOV_STAY, BITS_L = 0.5, 0.85, 20


def gauss2d(n, rng):
    x = rng.multivariate_normal(MEAN2, COV2, size=n)
    return x, lambda y: stats.multivariate_normal(MEAN2, COV2).logpdf(y)


def gauss8d(n, rng):
    x = rng.multivariate_normal(MEAN8, COV8, size=n)
    return x, lambda y: stats.multivariate_normal(MEAN8, COV8).logpdf(y)


def mixture2d(n, rng):
    x = MIX_MEANS[rng.integers(0, MIX_K, n)] + MIX_STD * rng.normal(size=(n, 2))

    def truth(y):
        parts = np.stack([stats.multivariate_normal(m, MIX_STD**2 * np.eye(2)).logpdf(y) for m in MIX_MEANS], 1)
        return special.logsumexp(parts, axis=1) - math.log(MIX_K)
    return x, truth


def roll(n, rng):
    """scikit-learn's make_swiss_roll (columns 0 and 2) with noise ROLL_NOISE, drawn here as it draws it:
    t ~ U(1.5 pi, 4.5 pi), y = (t cos t, t sin t) + noise N(0, I)."""
    t = rng.uniform(*ROLL_T, n)
    x = np.stack([t * np.cos(t), t * np.sin(t)], 1) + ROLL_NOISE * rng.normal(size=(n, 2))

    def truth(y, nodes=20001):
        """log (1 / (b - a)) int_a^b N(y; c(s), noise^2 I) ds by Simpson's rule (nodes: far finer than the bump)."""
        s = np.linspace(*ROLL_T, nodes)
        w = np.full(nodes, 2.0)
        w[1::2], w[0], w[-1] = 4.0, 1.0, 1.0
        log_w = np.log(w * (ROLL_T[1] - ROLL_T[0]) / (3 * (nodes - 1)))
        c = np.stack([s * np.cos(s), s * np.sin(s)], 1)
        out = []
        for part in np.array_split(y, max(1, len(y) // 256)):
            sq = ((part[:, None, :] - c[None]) ** 2).sum(-1)
            out.append(special.logsumexp(log_w - sq / (2 * ROLL_NOISE**2), axis=1))
        return (np.concatenate(out) - math.log(2 * math.pi * ROLL_NOISE**2)
                - math.log(ROLL_T[1] - ROLL_T[0]))
    return x, truth


def bits_iid(n, rng):
    x = (rng.random((n, BITS_L)) < BITS_P).astype(np.uint8)
    return x, lambda y: (y * np.log(BITS_P) + (1 - y) * np.log1p(-BITS_P)).sum(1)


def bits_markov(n, rng):
    x = np.zeros((n, BITS_L), dtype=np.uint8)
    x[:, 0] = rng.random(n) < MARKOV_FIRST
    for i in range(1, BITS_L):
        stay = rng.random(n) < MARKOV_STAY
        x[:, i] = np.where(stay, x[:, i - 1], 1 - x[:, i - 1])

    def truth(y):
        first = y[:, 0] * math.log(MARKOV_FIRST) + (1 - y[:, 0]) * math.log1p(-MARKOV_FIRST)
        same = (y[:, 1:] == y[:, :-1]).sum(1)
        return first + same * math.log(MARKOV_STAY) + (BITS_L - 1 - same) * math.log1p(-MARKOV_STAY)
    return x, truth


def sklearn_table(name):
    def make(n, rng):  # the whole table, whatever n
        from sklearn import datasets
        return getattr(datasets, f"load_{name}")().data, None
    return make


SETS = {"gauss2d": gauss2d, "gauss8d": gauss8d, "mixture2d": mixture2d, "roll": roll,
        "bits_iid": bits_iid, "bits_markov": bits_markov,
        "wine": sklearn_table("wine"), "breast_cancer": sklearn_table("breast_cancer")}
BITS = ("bits_iid", "bits_markov")
SEEDS = {name: 100 + i for i, name in enumerate(SETS)}

# What dataset=array trained with before the own-data defaults (the Swiss roll's settings, one global scale, the last
# weights reported; 0/1 sequences with the prior B(0.5)), written as overrides of today's config.
BEFORE = ["T=40", "net=mlp", "lr_scheduler=none", "callbacks=default", "trainer.max_steps=4000", "trainer.max_epochs=-1",
          "trainer.check_val_every_n_epoch=null", "trainer.val_check_interval=1000", "val_n_t=8", "test_weights=last",
          "t_sampling=uniform"]
BEFORE_VECTORS = ["dataset.scaling=global", "schedule=geometric"]
BEFORE_BITS = ["diffusion.p=0.5"]


def write_data(out: Path, name: str, n: int, n_test: int) -> Path:
    """The set's file: generated sets as .npz with their own splits (n to train on, n // 10 to validate, n_test to
    test: the bound's per-example noise needs many test examples to resolve a few hundredths of a bit); the real
    tables as one .npy array, split by dataset=array (a tenth each for validation and test)."""
    if truth_of(name) is None:
        path = out / "data" / f"{name}.npy"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, SETS[name](0, None)[0])
        return path
    path = out / "data" / f"{name}_{n}_{n_test}.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(SEEDS[name])
        sizes = {"train": n, "val": max(2, n // 10), "test": n_test}
        np.savez(path, **{split: SETS[name](size, rng)[0] for split, size in sizes.items()})
    return path


def truth_of(name: str):
    """The set's log-density function (nats per example, the file's units), or None for the real tables."""
    return SETS[name](1, np.random.default_rng(0))[1]


def per_example(eval_json: dict) -> tuple[np.ndarray, np.ndarray]:
    """(K [N] in the file's units, the test rows [N, D] as the file holds them) of the weights eval.json used,
    recomputed with the same estimator and keyed draws (seed 0): the same K, now per example."""
    import torch

    from dpm.app.build import restore
    from dpm.app.checkpoint import load_checkpoint
    from dpm.tasks.bound import per_example_bound

    ckpt = load_checkpoint(eval_json["checkpoint"])
    dm, module, _ = restore(ckpt, eval_json.get("weights", "auto"))
    table = per_example_bound(module.eval(), dm, split="test", estimator=eval_json["estimator"],
                              n_t=eval_json["n_t"], batch_size=dm.eval_batch_size, seed=0, progress=False)
    K = table[:, 1].numpy()
    if abs(K.mean() - eval_json["K"]) > 1e-6 * max(1.0, abs(eval_json["K"])):
        raise RuntimeError(f"recomputed K {K.mean()} differs from eval.json's {eval_json['K']}")
    raw = dm.load()["test"].double().numpy()  # the file's own values of the test examples, in the split's order
    return K - (eval_json["K"] - eval_json.get("K_raw", eval_json["K"])), raw


def train(name: str, path: Path, run_dir: Path, settings: list[str]) -> tuple[float, tuple, tuple]:
    command = [sys.executable, "train.py", "dataset=array", f"dataset.path={path}",
               *(["diffusion=binomial", "schedule=binomial"] if name in BITS else []), *settings,
               "latest_link=null", "progress=false", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]
    print("$ " + " ".join(command[1:]), flush=True)
    load_before = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (run_dir / "measure.log").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "measure.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: train.py exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds, load_before, os.getloadavg()


def measure(name: str, out: Path, tag: str, settings: list[str], n: int, n_test: int, seed: int = 0) -> dict:
    """Train the set (once: an existing run directory is read again) and its table row. seed: dataset.seed, the
    split of a real table."""
    path = write_data(out, name, n, n_test)
    run_dir = out / tag / (name if seed == 0 else f"{name}_seed{seed}")
    settings = settings + ([f"dataset.seed={seed}"] if seed else [])
    if not (run_dir / "eval.json").is_file():
        seconds, load_before, load_after = train(name, path, run_dir, settings)
        (run_dir / "measure.json").write_text(json.dumps({"seconds": seconds, "load_before": load_before,
                                                          "load_after": load_after}))
    timing = json.loads((run_dir / "measure.json").read_text())
    result = json.loads((run_dir / "eval.json").read_text())
    row = {"set": name if seed == 0 else f"{name} (split {seed})", "K_raw": result.get("K_raw", result["K"]), "K_raw_se": result.get("K_raw_stderr", result["K_stderr"]),
           "unit": result["unit"], "steps": result.get("weights_step"), **timing,
           "best_baseline": result.get("best_baseline"), "K_minus_best": result.get("K_minus_best_baseline"),
           "K_minus_best_se": result.get("K_minus_best_baseline_stderr")}
    if result.get("best_baseline"):
        best = result["baselines"][result["best_baseline"]]
        row["baseline"] = best.get("log_likelihood_raw", best["log_likelihood"])
    truth = truth_of(name)
    if truth is not None:
        if not (run_dir / "K_test.npz").is_file():
            K, raw = per_example(result)
            np.savez(run_dir / "K_test.npz", K=K, truth=truth(raw) / LN2, dims=raw.shape[1])
        saved = np.load(run_dir / "K_test.npz")
        K, true = saved["K"], saved["truth"]
        row.update(truth=float(true.mean()), gap=float((K - true).mean()),
                   gap_se=float((K - true).std(ddof=1) / math.sqrt(len(K))), dims=int(saved["dims"]))
    return row


def compare(out: Path, tag: str, other: str, names: list[str]) -> None:
    """K of runs `tag` minus K of runs `other` on the same test examples and keyed draws: paired differences."""
    for name in names:
        a, b = out / tag / name / "K_test.npz", out / other / name / "K_test.npz"
        if a.is_file() and b.is_file():
            d = np.load(a)["K"] - np.load(b)["K"]
            print(f"{name}: K[{tag}] - K[{other}] = {d.mean():.4f} ± {d.std(ddof=1) / math.sqrt(len(d)):.4f}")


def fmt(v, se=None, digits=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def table(rows: list[dict]) -> str:
    head = ("| set | K_raw (file units) | truth | K - truth | per dim | best baseline | K - best baseline | "
            "weights' step | time | load before / after |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        per_dim = r["gap"] / r["dims"] if "gap" in r and r["set"] not in BITS else None
        lines.append(
            f"| {r['set']} | {fmt(r['K_raw'], r['K_raw_se'])} {r['unit']} | {fmt(r.get('truth'))} | "
            f"{fmt(r.get('gap'), r.get('gap_se'))} | {fmt(per_dim, digits=4)} | "
            f"{(r['best_baseline'] or '-')} {fmt(r.get('baseline'))} | {fmt(r['K_minus_best'], r['K_minus_best_se'])} | "
            f"{r['steps'] if r['steps'] is not None else '-'} | {r['seconds'] / 60:.1f} min | "
            f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/dpm_own_data", help="data files and runs (default: %(default)s)")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated, from: " + ", ".join(SETS))
    parser.add_argument("--settings", choices=("after", "before"), default="after",
                        help="after: the defaults; before: dataset=array's settings before the own-data defaults")
    parser.add_argument("--n", type=int, default=20000, help="training examples per generated set (default: %(default)s)")
    parser.add_argument("--n-test", type=int, default=20000, help="test examples per generated set (default: %(default)s)")
    parser.add_argument("--compare", metavar="TAG", help="also print K minus K of the runs TAG, paired per example")
    parser.add_argument("--splits", type=int, default=1,
                        help="the real tables (wine, breast_cancer): also train on this many other splits "
                             "(dataset.seed=1, 2, ...) and print the mean of K - best baseline over them")
    parser.add_argument("--tag", help="the runs' folder under --out (default: the settings' name)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an extra override")
    args = parser.parse_args(argv)
    out = Path(args.out)
    names = [s for s in args.sets.split(",") if s]
    unknown = sorted(set(names) - set(SETS))
    if unknown:
        parser.error(f"unknown sets {unknown}; valid: {list(SETS)}")
    rows = []
    for name in names:
        before = BEFORE + (BEFORE_BITS if name in BITS else BEFORE_VECTORS)
        settings = (before if args.settings == "before" else []) + args.set
        for seed in range(args.splits if truth_of(name) is None else 1):
            rows.append(measure(name, out, args.tag or args.settings, settings, args.n, args.n_test, seed))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    for name in names:
        diffs = [r["K_minus_best"] for r in rows if r["set"].split(" ")[0] == name and r["K_minus_best"] is not None]
        if truth_of(name) is None and len(diffs) > 1:
            print(f"{name}: K_raw - best baseline over {len(diffs)} splits: {np.mean(diffs):.3f} ± "
                  f"{np.std(diffs, ddof=1) / math.sqrt(len(diffs)):.3f} (mean ± its standard error)")
    if args.compare:
        compare(out, args.tag or args.settings, args.compare, names)
    return rows


if __name__ == "__main__":
    main()
