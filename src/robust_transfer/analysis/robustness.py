"""Does the source's robustness survive fine-tuning? Clean and robust accuracy after transfer.

Runs whose recipe set ``robust_eps`` carry ``robust_acc``: the fine-tuned model's accuracy
under PGD on a fixed class-balanced subset of the target's test set. This module tables
and plots clean and robust test accuracy against the source's training eps, one line per
n, one column per unfrozen setting.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from robust_transfer.analysis.intervals import mean_t_interval


def robustness_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean clean and robust test accuracy with 95% t-intervals over seeds.

    Args:
        runs: finished runs with ``target, source, source_eps, source_norm, n,
            unfrozen_blocks, seed, test_acc, robust_acc`` (and ``lr`` if several rates).

    Returns:
        One row per (target, source, n, unfrozen_blocks, lr); empty when no run measured
        robust accuracy.
    """
    runs = runs.dropna(subset=["robust_acc"]) if "robust_acc" in runs else runs.iloc[:0]
    keys = ["target", "source", "source_eps", "source_norm", "n", "unfrozen_blocks", "lr"]
    rows = []
    for key, g in runs.groupby(keys, observed=True):
        clean, clean_lo, clean_hi = mean_t_interval(g["test_acc"])
        robust, robust_lo, robust_hi = mean_t_interval(g["robust_acc"])
        rows.append({**dict(zip(keys, key, strict=True)), "seeds": len(g), "clean": clean,
                     "clean_lo": clean_lo, "clean_hi": clean_hi, "robust": robust,
                     "robust_lo": robust_lo, "robust_hi": robust_hi})
    return pd.DataFrame(rows, columns=[*keys, "seeds", "clean", "clean_lo", "clean_hi", "robust",
                                       "robust_lo", "robust_hi"])


def robustness_figure(table: pd.DataFrame, target: str, lr: float | None = None) -> Figure | None:
    """Clean (solid) and robust (dashed) accuracy against source eps, a line per n.

    Columns are unfrozen settings. Eps is drawn on a symmetric-log axis so the natural
    source (eps 0) sits at the left. ``lr``: the rate to show (default the largest).
    """
    t = table[table["target"] == target]
    if t.empty:
        return None
    lr = float(t["lr"].max()) if lr is None else lr
    t = t[t["lr"] == lr]
    settings = sorted(t["unfrozen_blocks"].unique(), key=lambda u: (u == "all", str(u)))
    fig = Figure(figsize=(3.6 * len(settings) + 1, 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(settings), sharey=True))
    ns = sorted(t["n"].unique())
    shades = {n: c for n, c in zip(ns, np.linspace(0.25, 0.85, len(ns)), strict=True)}
    for ax, k in zip(axes, settings, strict=True):
        for n in ns:
            d = t[(t["unfrozen_blocks"] == k) & (t["n"] == n)].sort_values("source_eps")
            color = (0.1, 0.2, shades[n])
            ax.plot(d["source_eps"], 100 * d["clean"], "o-", color=color, lw=1.2, label=f"n={n} clean")
            ax.plot(d["source_eps"], 100 * d["robust"], "s--", color=color, lw=1.2,
                    label=f"n={n} robust")
        ax.set_xscale("symlog", linthresh=0.05)
        ax.set_title(f"{k} block(s) unfrozen" if k != "0" else "head only", fontsize=10)
        ax.set_xlabel("source training eps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{target}: clean (solid) and PGD (dashed) accuracy after fine-tuning, lr {lr:g}",
                 fontsize=10)
    return fig
