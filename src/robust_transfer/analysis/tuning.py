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

:func:`tuning_section` gathers all of this for the analysis report ("Tuned on
validation"); :func:`shared_rate_runs` picks the runs the rest of the report uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from robust_transfer.analysis.frames import CELL_KEYS, unfrozen_text
from robust_transfer.analysis.intervals import CIOptions, mean_t_interval
from robust_transfer.analysis.stats import ci_table
from robust_transfer.errors import ConfigError, RobustTransferError

KEYS = ["target", "n", "unfrozen_blocks"]


@dataclass(frozen=True)
class TuningSection:
    """The report's "Tuned on validation" section (all from the runs' final epochs).

    Attributes:
        rates: the learning rates the runs were trained with, ascending.
        shared_lr: the one rate of the paper-style comparison (the largest).
        val_images: validation images held out, when the runs record it (else ``None``).
        chosen: :func:`choose_lr` per epoch budget (column ``epochs``); empty with one rate.
        deltas: :func:`tuned_deltas` per epoch budget (column ``epochs``); empty with one rate.
        sentences: :func:`tuning_sentences` of ``deltas``.
        notes: what was left out and why, in sentences.
    """

    rates: list[float]
    shared_lr: float
    val_images: int | None = None
    chosen: pd.DataFrame = field(default_factory=pd.DataFrame)
    deltas: pd.DataFrame = field(default_factory=pd.DataFrame)
    sentences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def shared_rate_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, float | None]:
    """The runs at one learning rate, when cells were trained at several (a tuning study).

    Args:
        runs: prepared runs; a (source, target, n, unfrozen_blocks, epochs, seed) may
            occur once per ``lr``.

    Returns:
        ``(runs, None)`` unchanged when every cell has one run; else the runs at the
        largest rate (the paper's single rate, 0.1, in the presets) and that rate.

    Raises:
        ConfigError: cells repeat but ``lr`` holds no numbers.
    """
    if "lr" not in runs.columns or not runs.duplicated(CELL_KEYS).any():
        return runs, None
    lr = pd.to_numeric(runs["lr"], errors="coerce")
    if lr.isna().all():
        raise ConfigError("runs share a (source, target, n, unfrozen_blocks, epochs, seed) and "
                          "their lr column holds no numbers; keep one run per cell and seed")
    shared = float(lr.max())
    return runs[lr == shared].reset_index(drop=True), shared


def tuning_section(runs: pd.DataFrame, baseline: str,
                   options: CIOptions | None = None) -> TuningSection | None:
    """Rates chosen on validation and the deltas at them, for the analysis report.

    Args:
        runs: prepared runs of every rate (final-epoch accuracies), with ``val_acc``.
        baseline: the baseline source's label.
        options: interval settings of the deltas (default: t-interval, 95%).

    Returns:
        ``None`` when no run has a validation accuracy (the section is left out).
        Runs without one are left out of the section (a note says how many); a cell the
        comparison cannot be made in becomes a note, not an error.

    Raises:
        ConfigError: ``val_acc`` holds text or values outside [0, 1].
    """
    if "val_acc" not in runs.columns or not runs["val_acc"].notna().any():
        return None
    val = fraction_column(runs, "val_acc")
    notes = []
    if val.isna().any():
        notes.append(f"{int(val.isna().sum())} of {len(runs)} runs have no validation accuracy "
                     "and are left out of this section.")
    runs = runs.assign(val_acc=val)[val.notna()]
    lr = pd.to_numeric(runs["lr"], errors="coerce") if "lr" in runs.columns else None
    if lr is None or lr.isna().any():
        return TuningSection([], float("nan"), _val_images(runs), notes=[
            *notes, "Some runs record no learning rate, so no rate is chosen."])
    runs = runs.assign(lr=lr)
    rates = sorted(float(r) for r in lr.unique())
    if len(rates) < 2:
        return TuningSection(rates, rates[-1], _val_images(runs), notes=[
            *notes, f"Every run used lr {rates[0]:g}, so there was no rate to choose."])
    chosen, deltas = [], []
    for budget, part in runs.groupby("epochs", sort=True):
        try:
            chosen.append(choose_lr(part).assign(epochs=budget))
            deltas.append(tuned_deltas(part, baseline, rates[-1], options).assign(epochs=budget))
        except RobustTransferError as err:
            notes.append(f"{budget}-epoch runs: {err}")
    every = pd.concat(deltas, ignore_index=True) if deltas else pd.DataFrame()
    return TuningSection(rates, rates[-1], _val_images(runs),
                         chosen=pd.concat(chosen, ignore_index=True) if chosen else pd.DataFrame(),
                         deltas=every, sentences=tuning_sentences(every, baseline), notes=notes)


def _val_images(runs: pd.DataFrame) -> int | None:
    if "val_images" not in runs.columns:
        return None
    sizes = pd.to_numeric(runs["val_images"], errors="coerce").dropna().unique()
    return int(sizes[0]) if len(sizes) == 1 else None


def fraction_column(runs: pd.DataFrame, col: str) -> pd.Series:
    """``runs[col]`` as floats in [0, 1] (NaN where missing).

    Raises:
        ConfigError: text where numbers belong, or values outside [0, 1].
    """
    values = pd.to_numeric(runs[col], errors="coerce").astype(float)
    text = values.isna() & runs[col].notna() & (runs[col].astype(str).str.strip() != "")
    if text.any():
        raise ConfigError(f"column '{col}' must hold numbers, found "
                          f"'{runs.loc[text, col].iloc[0]}' in {int(text.sum())} row(s)")
    bad = (values < 0) | (values > 1)
    if bad.any():
        raise ConfigError(f"{col} must be a fraction in [0, 1], found {values[bad].iloc[0]:g} "
                          "(divide percentages by 100)")
    return values


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
                 shared_lr: float | None = None,
                 options: CIOptions | None = None) -> pd.DataFrame:
    """Robust-minus-natural test deltas at one shared rate and at each source's own rate.

    Args:
        runs: as for :func:`choose_lr`.
        baseline: the natural source's label.
        shared_lr: the single rate of the paper-style comparison (default: the largest
            rate in the runs, the paper's 0.1 in the presets).
        options: interval settings (default: t-interval, 95%).

    Returns:
        One row per robust source and (target, n, unfrozen_blocks): ``shared_delta``,
        ``shared_lo``, ``shared_hi`` (at ``shared_lr``), ``tuned_delta``, ``tuned_lo``,
        ``tuned_hi`` (each source at its chosen rate, the baseline at its own), the
        rates chosen for the source and the baseline, and ``seeds``. Deltas in accuracy
        (fractions), intervals over seeds as ``options`` say.

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
                     **_summary("shared", s_shared, options),
                     **_summary("tuned", s_tuned, options),
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


def _summary(prefix: str, deltas: pd.Series, options: CIOptions | None) -> dict[str, float]:
    options = options or CIOptions()
    if options.method == "t":
        mean, lo, hi = mean_t_interval(deltas.to_numpy(), options.level)
    else:
        row = ci_table(pd.DataFrame({"cell": 0, "delta": deltas.to_numpy()}), ["cell"], "delta",
                       options)
        mean, lo, hi = (float(row[c].iloc[0]) if len(row) else float("nan")
                        for c in ("mean", "lo", "hi"))
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


def tuning_sentences(deltas: pd.DataFrame, baseline: str = "natural") -> list[str]:
    """Plain sentences: where the sign or significance of a delta changes with tuning.

    Args:
        deltas: :func:`tuned_deltas` output.
        baseline: the baseline source's label, as the sentences name it.
    """
    out = []
    for r in deltas.itertuples():
        shared = _word(r.shared_delta, r.shared_lo, r.shared_hi, baseline)
        tuned = _word(r.tuned_delta, r.tuned_lo, r.tuned_hi, baseline)
        where = (f"{r.source} vs {baseline} on {r.target}, n={r.n}, "
                 f"{unfrozen_text(str(r.unfrozen_blocks))}")
        if shared == tuned:
            out.append(f"{where}: {shared} at lr {r.shared_lr:g} and after tuning "
                       f"({100 * r.tuned_delta:+.1f} points at lr {r.lr:g} vs {r.baseline_lr:g})")
        else:
            out.append(f"{where}: {shared} at lr {r.shared_lr:g} ({100 * r.shared_delta:+.1f} "
                       f"points) but {tuned} after tuning ({100 * r.tuned_delta:+.1f} points at "
                       f"lr {r.lr:g} vs {r.baseline_lr:g})")
    return out


def _word(mean: float, lo: float, hi: float, baseline: str = "natural") -> str:
    if lo > 0:
        return "robust ahead"
    if hi < 0:
        return f"{baseline} ahead"
    return "no clear difference"
