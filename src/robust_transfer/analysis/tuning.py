"""A fair comparison: each source at its own learning rate, chosen on validation.

The paper fine-tuned every source at one learning rate and read accuracies off the test
set. When a study's recipe lists several learning rates and holds out a validation set
(``recipe: {lr: [0.01, 0.03, 0.1], val_images: 300}``), this module treats the rates as
tuning: per source, target, n and unfrozen setting, the rate with the highest mean
validation accuracy over seeds is chosen (never test accuracy), and robust-minus-natural
test-accuracy deltas are recomputed with each source at its own chosen rate, beside the
deltas at one shared rate. Deltas are paired by seed (the same training images).

Every number here comes from the runs' final epoch. ``select_epochs_on_validation``
instead picks each run's epoch by validation accuracy, for studies that compare epochs.
"""

from __future__ import annotations

import pandas as pd

from robust_transfer.analysis.intervals import mean_t_interval
from robust_transfer.errors import ConfigError

KEYS = ["target", "n", "unfrozen_blocks"]


def _require_validation(runs: pd.DataFrame) -> None:
    if "val_acc" not in runs or runs["val_acc"].isna().all():
        raise ConfigError("these runs have no validation accuracy: add 'val_images: N' to the "
                          "study's recipe so learning rates are chosen without looking at test")


def choose_lr(runs: pd.DataFrame) -> pd.DataFrame:
    """The learning rate each source would be given, chosen on validation.

    Args:
        runs: finished runs with ``source, target, n, unfrozen_blocks, seed, lr, val_acc,
            test_acc`` (as :func:`robust_transfer.study.load_results` returns them).

    Returns:
        One row per (source, target, n, unfrozen_blocks): ``lr`` chosen, its mean
        validation accuracy and the number of rates tried.

    Raises:
        ConfigError: no validation accuracies (the study held out no validation set).
    """
    _require_validation(runs)
    by_lr = (runs.groupby(["source", *KEYS, "lr"], observed=True)["val_acc"].mean()
             .rename("val_acc").reset_index())
    # ties go to the smaller rate (deterministic; the gentler choice)
    best = by_lr.sort_values(["val_acc", "lr"], ascending=[False, True]).groupby(
        ["source", *KEYS], observed=True).head(1)
    tried = by_lr.groupby(["source", *KEYS], observed=True)["lr"].nunique().rename("rates_tried")
    return best.merge(tried.reset_index(), on=["source", *KEYS]).sort_values(["source", *KEYS])


def tuned_deltas(runs: pd.DataFrame, baseline: str = "natural",
                 shared_lr: float | None = None) -> pd.DataFrame:
    """Robust-minus-natural test deltas at one shared rate and at each source's own rate.

    Args:
        runs: as for :func:`choose_lr`.
        baseline: the natural source's label.
        shared_lr: the single rate of the paper-style comparison (default: the largest
            rate in the runs, the paper's 0.1 in the presets).

    Returns:
        One row per robust source and (target, n, unfrozen_blocks): ``shared_delta``,
        ``shared_lo``, ``shared_hi`` (at ``shared_lr``), ``tuned_delta``, ``tuned_lo``,
        ``tuned_hi`` (each source at its chosen rate, the baseline at its own), the
        rates chosen for the source and the baseline, and ``seeds``. Deltas in accuracy
        (fractions), intervals 95% t over seeds.

    Raises:
        ConfigError: no validation accuracies, or no runs of ``baseline``.
    """
    chosen = choose_lr(runs)
    if baseline not in set(runs["source"]):
        raise ConfigError(f"no runs of the baseline source '{baseline}'; sources: "
                          f"{', '.join(sorted(set(runs['source'])))}")
    shared = float(runs["lr"].max()) if shared_lr is None else float(shared_lr)
    at_choice = runs.merge(chosen[["source", *KEYS, "lr"]], on=["source", *KEYS, "lr"])
    rows = []
    for (source, *key), group in chosen.groupby(["source", *KEYS], observed=True):
        if source == baseline:
            continue
        where = dict(zip(KEYS, key, strict=True))
        base_lr = _chosen_lr(chosen, baseline, where)
        s_shared = _delta(runs, source, baseline, where, shared, shared)
        s_tuned = _delta(at_choice, source, baseline, where, None, None)
        rows.append({"source": source, **where, "lr": float(group["lr"].iloc[0]),
                     "baseline_lr": base_lr, "shared_lr": shared,
                     **_summary("shared", s_shared), **_summary("tuned", s_tuned),
                     "seeds": int(min(len(s_shared), len(s_tuned)))})
    return pd.DataFrame(rows)


def _chosen_lr(chosen: pd.DataFrame, source: str, where: dict) -> float:
    mask = chosen["source"] == source
    for k, v in where.items():
        mask &= chosen[k] == v
    return float(chosen.loc[mask, "lr"].iloc[0]) if mask.any() else float("nan")


def _delta(runs: pd.DataFrame, source: str, baseline: str, where: dict,
           lr: float | None, base_lr: float | None) -> pd.Series:
    """Per-seed test-accuracy difference source minus baseline (paired by seed)."""
    mask = pd.Series(True, index=runs.index)
    for k, v in where.items():
        mask &= runs[k] == v

    def per_seed(label: str, rate: float | None) -> pd.Series:
        sel = mask & (runs["source"] == label)
        if rate is not None:
            sel &= runs["lr"] == rate
        return runs.loc[sel].set_index("seed")["test_acc"]

    a, b = per_seed(source, lr), per_seed(baseline, base_lr)
    return (a - b).dropna()


def _summary(prefix: str, deltas: pd.Series) -> dict[str, float]:
    mean, lo, hi = mean_t_interval(deltas.to_numpy())
    return {f"{prefix}_delta": mean, f"{prefix}_lo": lo, f"{prefix}_hi": hi}


def select_epochs_on_validation(epochs: pd.DataFrame) -> pd.DataFrame:
    """Each run's epoch with the highest validation accuracy (ties: the earliest).

    Args:
        epochs: per-epoch rows with ``run_id, epoch, val_acc, test_acc``.

    Returns:
        One row per run: the chosen epoch and its test accuracy.

    Raises:
        ConfigError: no validation accuracies.
    """
    if "val_acc" not in epochs or epochs["val_acc"].isna().all():
        raise ConfigError("these epochs have no validation accuracy: add 'val_images: N' to the "
                          "study's recipe")
    rows = epochs.dropna(subset=["val_acc"]).sort_values(["run_id", "val_acc", "epoch"],
                                                          ascending=[True, False, True])
    return rows.groupby("run_id").head(1)[["run_id", "epoch", "val_acc", "test_acc"]]


def verdict_sentences(deltas: pd.DataFrame) -> list[str]:
    """Plain sentences: where the sign or significance of a delta changes with tuning."""
    out = []
    for r in deltas.itertuples():
        shared = _word(r.shared_delta, r.shared_lo, r.shared_hi)
        tuned = _word(r.tuned_delta, r.tuned_lo, r.tuned_hi)
        where = f"{r.source} vs natural on {r.target}, n={r.n}, {r.unfrozen_blocks} unfrozen"
        if shared == tuned:
            out.append(f"{where}: {shared} at lr {r.shared_lr:g} and after tuning "
                       f"({r.tuned_delta:+.1%} at lr {r.lr:g} vs {r.baseline_lr:g})")
        else:
            out.append(f"{where}: {shared} at lr {r.shared_lr:g} ({r.shared_delta:+.1%}) but "
                       f"{tuned} after tuning ({r.tuned_delta:+.1%} at lr {r.lr:g} vs "
                       f"{r.baseline_lr:g})")
    return out


def _word(mean: float, lo: float, hi: float) -> str:
    if lo > 0:
        return "robust ahead"
    if hi < 0:
        return "natural ahead"
    return "no clear difference"
