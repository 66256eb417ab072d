"""The plot of a sweep report (python -m dpm.report): K +- 2 standard errors per run, grouped by the swept keys."""

from __future__ import annotations

import math
from pathlib import Path

from dpm.figures.save import plt, save

STYLE = {"complete": dict(fmt="o", mfc=None), "incomplete": dict(fmt="o", mfc="none"), "failed": dict(fmt="x"),
         "unreadable": dict(fmt="+")}  # a run whose config.yaml does not read


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def sweep_plot(rows: list[dict], keys: list[str], path: Path, title: str = "") -> Path:
    """One column of points per group of the swept keys other than the seed, one point per run (K from the report's
    rows, error bars 2 K_stderr where the run has one): filled complete, hollow incomplete, x failed, + unreadable. The true
    log-likelihood, where known, is a dashed line; runs without any K are named under the axis."""
    group_keys = [k for k in keys if k != "seed"]
    labels = list(dict.fromkeys(", ".join(f"{k}={r['overrides'].get(k, '-')}" for k in group_keys) or "all"
                                for r in rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(labels) + 2), 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    missing = []
    for i, label in enumerate(labels):
        members = [r for r in rows
                   if (", ".join(f"{k}={r['overrides'].get(k, '-')}" for k in group_keys) or "all") == label]
        for j, r in enumerate(members):
            if not _finite(r.get("K")):
                missing.append(f"{r['run']} ({r['status']})")
                continue
            x = i + (j - (len(members) - 1) / 2) * 0.5 / max(len(members), 1)
            err = 2 * r["K_stderr"] if _finite(r.get("K_stderr")) else None
            style = STYLE[r["status"]]
            ax.errorbar(x, r["K"], yerr=err, fmt=style["fmt"], color=colours[i % len(colours)], capsize=3,
                        mfc=style.get("mfc") or colours[i % len(colours)])
            if "seed" in keys:
                ax.annotate(str(r["overrides"].get("seed", "")), (x, r["K"]), textcoords="offset points",
                            xytext=(4, 2), fontsize=7)
    truths = {round(r["true_log_likelihood"], 3) for r in rows if _finite(r.get("true_log_likelihood"))}
    for truth in sorted(truths):
        ax.axhline(truth, ls="--", color="k", lw=1, label=f"true log-likelihood {truth:.3f}")
    if truths:
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 3 else 0, ha="right" if len(labels) > 3
                  else "center", fontsize=8)
    unit = next((r["unit"] for r in rows if r.get("unit")), "")
    ax.set_ylabel(f"K {('(' + unit + ')') if unit else ''} ± 2 s.e.")
    ax.grid(True, axis="y", alpha=0.3)
    note = "filled: complete, hollow: incomplete, x: failed" + (
        ", +: unreadable" if any(r["status"] == "unreadable" for r in rows) else "") + ("; labels: seed" if "seed" in keys else "")
    if missing:
        note += "\nno K: " + ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
    ax.set_xlabel(note, fontsize=8)
    ax.set_title(title or "sweep report", fontsize=10)
    return save(fig, path)
