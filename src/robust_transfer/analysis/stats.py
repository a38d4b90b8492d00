"""Confidence intervals across seeds and paired robust-minus-baseline differences.

Seeds are the unit of replication: a cell (source, target, n, unfrozen blocks, epochs)
has one accuracy per seed, and its interval is a t-interval over those (or, as an
option, a percentile bootstrap over seeds). Differences are paired: the robust and the
baseline run of one seed share the training subset, so each seed gives one difference
and the interval is taken over those differences.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from robust_transfer.analysis.intervals import CI_METHODS, CIOptions

SUMMARY_KEYS = ["source", "target", "unfrozen_blocks", "epochs", "n", "n_label"]
PAIR_KEYS = ["target", "n", "unfrozen_blocks", "epochs", "seed"]
CURVE_KEYS = ["source", "target", "unfrozen_blocks", "budget", "n", "n_label"]
EPOCH_PAIR_KEYS = ["target", "n", "unfrozen_blocks", "budget", "seed", "epoch"]
BY_BUDGET = "by budget"  # budget label of curves made from final accuracy per epoch budget
CI_COLUMNS = ["mean", "std", "n_seeds", "lo", "hi"]
__all__ = ["CI_METHODS", "CIOptions", "ci_table", "paired_deltas", "summarize_deltas",
           "summarize_runs", "epoch_curves", "epoch_deltas", "summarize_epoch_curves", "block_deltas"]

def ci_table(frame: pd.DataFrame, by: list[str], value: str,
             options: CIOptions | None = None) -> pd.DataFrame:
    """Mean and interval of ``value`` over the rows (seeds) of each ``by`` group.

    Args:
        frame: long frame, one row per seed (NaN values are ignored).
        by: grouping columns.
        value: the column to summarise.
        options: interval settings; default t-interval at 95%.

    Returns:
        ``by`` columns plus ``mean, std, n_seeds, lo, hi``; ``lo``/``hi`` are NaN for
        groups with a single seed.
    """
    options = options or CIOptions()
    frame = frame[frame[value].notna()]
    if frame.empty:
        return pd.DataFrame(columns=[*by, *CI_COLUMNS])
    grouped = frame.groupby(by, sort=True, observed=True)[value]
    stats = grouped.agg(["mean", "std", "count"]).reset_index()
    stats = stats.rename(columns={"count": "n_seeds"})
    codes = grouped.ngroup().to_numpy()
    lo, hi = CI_METHODS.get(options.method)(frame[value].to_numpy(float), codes, stats, options)
    stats["lo"], stats["hi"] = lo, hi
    return stats


def verdicts(lo: pd.Series, hi: pd.Series, n_seeds: pd.Series) -> np.ndarray:
    """Words for differences: "better", "worse", "no clear difference" or "one seed"."""
    return np.select([n_seeds < 2, lo > 0, hi < 0], ["one seed", "better", "worse"],
                     default="no clear difference")


def summarize_runs(runs: pd.DataFrame, options: CIOptions | None = None) -> pd.DataFrame:
    """Mean test accuracy with its interval per (source, target, unfrozen, epochs, n)."""
    return ci_table(runs, SUMMARY_KEYS, "test_acc", options)


def pair_with_baseline(frame: pd.DataFrame, baseline: str, keys: list[str],
                       value: str = "test_acc") -> pd.DataFrame:
    """Rows of the other sources next to the baseline row with the same ``keys``.

    Returns:
        The non-baseline rows that have a partner, with ``baseline_acc`` and
        ``delta = value - baseline_acc``.
    """
    base = frame.loc[frame["source"] == baseline, [*keys, value]]
    base = base.rename(columns={value: "baseline_acc"})
    other = frame[frame["source"] != baseline]
    merged = other.merge(base, on=keys, how="inner", validate="many_to_one")
    merged["delta"] = merged[value] - merged["baseline_acc"]
    return merged


def paired_deltas(runs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per-seed robust-minus-baseline accuracy, paired by (target, n, unfrozen, epochs, seed)."""
    return pair_with_baseline(runs, baseline, PAIR_KEYS)


def summarize_deltas(deltas: pd.DataFrame, keys: list[str] | None = None,
                     options: CIOptions | None = None) -> pd.DataFrame:
    """Mean paired difference, its interval and a ``verdict`` per cell.

    Args:
        deltas: output of :func:`paired_deltas` or :func:`epoch_deltas`.
        keys: cell columns; default :data:`SUMMARY_KEYS`.
        options: interval settings.
    """
    table = ci_table(deltas, keys or SUMMARY_KEYS, "delta", options)
    table["verdict"] = verdicts(table["lo"], table["hi"], table["n_seeds"])
    return table


def epoch_curves(runs: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy against epochs, one row per (run, epoch).

    With per-epoch rows, each run's own curve is used and ``budget`` is its epoch
    budget (as text). Without them, and with at least two epoch budgets in ``runs``,
    the final accuracy of each budget is the curve and ``budget`` is ``"by budget"``.

    Returns:
        Columns ``CURVE_KEYS + [seed, epoch, test_acc]``; empty when there is no curve.
    """
    meta = ["run_id", "source", "target", "unfrozen_blocks", "epochs", "n", "n_label", "seed"]
    if len(epochs):
        own = ["epoch_budget"] if "epoch_budget" in runs.columns else []
        curves = epochs[["run_id", "epoch", "test_acc"]].merge(runs[meta + own], on="run_id")
        curves["budget"] = curves[own[0] if own else "epochs"].astype(str)
    elif runs["epochs"].nunique() >= 2:
        curves = runs[[*meta, "test_acc"]].copy()
        curves["epoch"] = curves["epochs"]
        curves["budget"] = BY_BUDGET
    else:
        curves = pd.DataFrame(columns=[*meta, "epoch", "test_acc", "budget"])
    return curves[[*CURVE_KEYS, "seed", "epoch", "test_acc"]].reset_index(drop=True)


def summarize_epoch_curves(curves: pd.DataFrame, options: CIOptions | None = None) -> pd.DataFrame:
    """Mean accuracy with interval per (source, target, unfrozen, budget, n, epoch)."""
    return ci_table(curves, [*CURVE_KEYS, "epoch"], "test_acc", options)


def epoch_deltas(curves: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per-seed, per-epoch robust-minus-baseline accuracy (paired by seed and epoch)."""
    return pair_with_baseline(curves, baseline, EPOCH_PAIR_KEYS)


BLOCK_PAIR_KEYS = ["source", "target", "n", "epochs", "seed"]


def block_deltas(runs: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per-seed accuracy with ``reference`` unfrozen blocks minus each other setting.

    Pairs runs of one source, target, n, epoch budget and seed (the same training images)
    that differ only in how many blocks were unfrozen, as the paper's block comparison
    (3 blocks minus 0, 1 and 9).

    Returns:
        One row per (other setting, seed, cell): the other run's columns (its
        ``unfrozen_blocks`` says which setting) and ``delta`` = reference minus other.
    """
    ref = runs.loc[runs["unfrozen_blocks"] == reference, [*BLOCK_PAIR_KEYS, "test_acc"]]
    ref = ref.rename(columns={"test_acc": "reference_acc"})
    other = runs[runs["unfrozen_blocks"] != reference]
    merged = other.merge(ref, on=BLOCK_PAIR_KEYS, how="inner", validate="many_to_one")
    merged["delta"] = merged["reference_acc"] - merged["test_acc"]
    return merged
