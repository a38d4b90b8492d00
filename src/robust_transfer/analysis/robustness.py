"""Does the source's robustness survive fine-tuning? Clean and robust accuracy after transfer.

Runs whose recipe set ``robust_eps`` carry ``robust_acc``: the fine-tuned model's accuracy
under PGD on a fixed class-balanced subset of the target's test set. This module tables
and plots clean and robust test accuracy against the source's training eps, one line per
n, one column per unfrozen setting, and (:func:`robustness_section`, for the analysis
report) gives per target the robust-minus-baseline gap in robust accuracy at the largest n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from robust_transfer.analysis.frames import display_name, unfrozen_key, unfrozen_text
from robust_transfer.analysis.intervals import CIOptions
from robust_transfer.analysis.stats import PAIR_KEYS, ci_table, pair_with_baseline, summarize_deltas
from robust_transfer.analysis.tuning import fraction_column

ATTACK_COLUMNS = ("robust_norm", "robust_eps", "robust_steps", "robust_images")
NOT_RECORDED = "attack not recorded with the runs"
GAP_KEYS = ["target", "n", "n_label", "unfrozen_blocks", "epochs", "attack", "source"]


@dataclass
class RobustnessSection:
    """The report's "Robustness after transfer" section (final-epoch accuracies).

    Attributes:
        table: :func:`robustness_table` of the runs that measured robust accuracy.
        gaps: per (target, n, unfrozen, epochs, attack, source): the paired robust-minus-
            baseline difference in robust accuracy (``mean, std, n_seeds, lo, hi,
            verdict``, fractions) over seeds.
        sentences: one per target: the gaps at its largest n, with their intervals.
        attacks: the attacks' descriptions (usually one).
        notes: what was left out and why, in sentences.
    """

    table: pd.DataFrame
    gaps: pd.DataFrame
    sentences: list[str] = field(default_factory=list)
    attacks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def attack_text(norm: object, eps: object, steps: object, images: object) -> str:
    """"L2 PGD-20 at eps 0.25 on 200 class-balanced test images" (or "attack not recorded")."""
    try:
        eps_f, steps_i, images_i = float(eps), int(steps), int(images)  # type: ignore[arg-type,call-overload]
    except (TypeError, ValueError):
        return NOT_RECORDED
    if math.isnan(eps_f) or str(norm) not in ("l2", "linf"):
        return NOT_RECORDED
    radius = display_name("x", eps_f, str(norm)).split(" eps ", 1)[1]
    name = "L2" if norm == "l2" else "Linf"
    return (f"{name} PGD-{steps_i} at eps {radius} (step 2.5 eps/{steps_i}) on {images_i} "
            "class-balanced test images")


def robustness_section(runs: pd.DataFrame, baseline: str, sources: pd.DataFrame,
                       options: CIOptions | None = None) -> RobustnessSection | None:
    """Clean and robust accuracy, and the robust-minus-baseline gaps, for the report.

    Args:
        runs: prepared runs of one learning rate with their final-epoch ``test_acc`` and
            ``robust_acc`` (and, from a study, the attack columns :data:`ATTACK_COLUMNS`).
        baseline: the baseline source's label.
        sources: :func:`~.frames.source_table` output (display names).
        options: interval settings (default t, 95%).

    Returns:
        ``None`` when no run measured robust accuracy. Runs without ``robust_acc`` are left
        out (a note says how many); gaps pair a source's run with the baseline run of the
        same seed, so a seed measured for only one of them gives no gap.

    Raises:
        ConfigError: ``robust_acc`` holds text or values outside [0, 1].
    """
    if "robust_acc" not in runs.columns or not runs["robust_acc"].notna().any():
        return None
    options = options or CIOptions()
    acc = fraction_column(runs, "robust_acc")
    notes = []
    if acc.isna().any():
        notes.append(f"Robust accuracy was measured in {int(acc.notna().sum())} of {len(runs)} "
                     "runs; this section uses those runs only, clean accuracy included.")
    measured = runs.assign(robust_acc=acc, attack=_attacks(runs))[acc.notna()]
    table = robustness_table(measured, options)
    deltas = pair_with_baseline(measured, baseline, [*PAIR_KEYS, "attack"], "robust_acc")
    gaps = summarize_deltas(deltas, GAP_KEYS, options)
    names = dict(zip(sources["source"], sources["name"], strict=True))
    sentences = [gap_sentence(gaps, target, names.get(baseline, baseline), names,
                              options.percent)
                 for target in sorted(measured["target"].unique())]
    attacks = sorted(measured["attack"].unique())
    return RobustnessSection(table, gaps, sentences, attacks, notes)


def _attacks(runs: pd.DataFrame) -> list[str]:
    if not all(c in runs.columns for c in ATTACK_COLUMNS):
        return [NOT_RECORDED] * len(runs)
    return [attack_text(*row) for row in runs[list(ATTACK_COLUMNS)].itertuples(index=False)]


def gap_sentence(gaps: pd.DataFrame, target: str, base_name: str, names: dict[str, str],
                 percent: str = "95%") -> str:
    """One target's robust-minus-baseline robust accuracy at its largest n, in words.

    The largest n measured (and, with several epoch budgets, that n's largest budget);
    each unfrozen setting lists every robust source's mean paired gap in points and its
    interval over seeds.
    """
    order = {s: i for i, s in enumerate(names)}
    g = gaps[gaps["target"] == target]
    if g.empty:
        return (f"{target}: the {base_name} source's robust accuracy was not measured beside "
                "another source's (same n, unfrozen setting and seed), so no gap is given.")
    n = g["n"].max()
    g = g[g["n"] == n]
    budget = g["epochs"].max()
    several_budgets = gaps.loc[gaps["target"] == target, "epochs"].nunique() > 1
    g = g[g["epochs"] == budget]
    attack = g["attack"].value_counts().index[0]
    g = g[g["attack"] == attack]
    label = str(g["n_label"].iloc[0])
    n_text = f"n={n}" if label == str(n) else f"n={label} ({n} images)"
    parts = []
    for unfrozen in sorted(g["unfrozen_blocks"].unique(), key=unfrozen_key):
        rows = g[g["unfrozen_blocks"] == unfrozen]
        rows = rows.iloc[np.argsort([order.get(s, len(order)) for s in rows["source"]],
                                    kind="stable")]
        gaps_text = ", ".join(f"{names.get(r.source, r.source)} {_points(r.mean, r.lo, r.hi)}"
                              for r in rows.itertuples())
        parts.append(f"{unfrozen_text(unfrozen)}: {gaps_text}")
    budget_text = f", {budget} epochs" if several_budgets else ""
    return (f"{target}, {n_text} (the largest n){budget_text}: robust accuracy minus "
            f"{base_name}'s under {attack.replace(' class-balanced test images', ' test images')}"
            f", paired by seed [{percent} interval] — " + "; ".join(parts) + ".")


def _points(mean: float, lo: float, hi: float) -> str:
    if math.isnan(lo) or math.isnan(hi):
        return f"{100 * mean:+.1f} points (one seed, no interval)"
    return f"{100 * mean:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def robustness_table(runs: pd.DataFrame, options: CIOptions | None = None) -> pd.DataFrame:
    """Mean clean and robust test accuracy with intervals over seeds (default 95% t).

    Args:
        runs: finished runs with ``target, source, source_eps, source_norm, n,
            unfrozen_blocks, seed, test_acc, robust_acc`` (and ``lr``, ``n_label``,
            ``epochs``, ``attack`` when present: each becomes a key).
        options: interval settings.

    Returns:
        One row per (target, source, n, unfrozen_blocks and the optional keys), with
        ``seeds, clean, clean_lo, clean_hi, robust, robust_lo, robust_hi``; clean accuracy
        over the same runs as robust. Empty when no run measured robust accuracy.
    """
    runs = runs.dropna(subset=["robust_acc"]) if "robust_acc" in runs else runs.iloc[:0]
    keys = ["target", "source", "n", "unfrozen_blocks"]
    keys += [c for c in ("source_eps", "source_norm", "n_label", "epochs", "lr", "attack")
             if c in runs.columns and runs[c].notna().all()]  # NaN keys would drop rows
    values = ["seeds", "clean", "clean_lo", "clean_hi", "robust", "robust_lo", "robust_hi"]
    if runs.empty:
        return pd.DataFrame(columns=[*keys, *values])
    clean = ci_table(runs, keys, "test_acc", options)
    robust = ci_table(runs, keys, "robust_acc", options)
    table = clean.merge(robust, on=keys, suffixes=("_c", "_r"))
    table = table.rename(columns={"n_seeds_r": "seeds", "mean_c": "clean", "lo_c": "clean_lo",
                                  "hi_c": "clean_hi", "mean_r": "robust", "lo_r": "robust_lo",
                                  "hi_r": "robust_hi"})
    return table[[*keys, *values]].reset_index(drop=True)


def robustness_figure(table: pd.DataFrame, target: str, lr: float | None = None) -> Figure | None:
    """Clean (solid) and robust (dashed) accuracy against source eps, a line per n.

    Columns are unfrozen settings. Eps is drawn on a symmetric-log axis so the natural
    source (eps 0) sits at the left. ``lr``: the rate to show (default the largest). With
    several epoch budgets each n shows its largest; with several attacks, the most common.
    """
    t = table[table["target"] == target]
    if t.empty or "source_eps" not in t.columns:
        return None
    if "lr" in t.columns:
        lr = float(t["lr"].max()) if lr is None else lr
        t = t[t["lr"] == lr]
    if "epochs" in t.columns:
        t = t[t["epochs"] == t.groupby("n")["epochs"].transform("max")]
    if "attack" in t.columns:
        t = t[t["attack"] == t["attack"].value_counts().index[0]]
    settings = sorted(t["unfrozen_blocks"].unique(), key=unfrozen_key)
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
        ax.set_title(unfrozen_text(str(k)), fontsize=10)
        ax.set_xlabel("source training eps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize=7, loc="best")
    rate = "" if lr is None else f", lr {lr:g}"
    fig.suptitle(f"{target}: clean (solid) and PGD (dashed) accuracy after fine-tuning{rate}",
                 fontsize=10)
    return fig
