"""The input frames: checking the contract, CSV import, sources and the baseline.

Everything downstream assumes frames that passed :func:`prepare_runs` and
:func:`prepare_epochs`: contract columns present with fixed dtypes, only finished runs,
at most one run per (source, target, n, unfrozen_blocks, epochs, seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from robust_transfer.errors import ConfigError, RobustTransferError, UnknownNameError
from robust_transfer.models.finetune import n_label
from robust_transfer.study.results import StudyResults, read_study
from robust_transfer.study.store import RECIPE_COLUMNS as STORE_RECIPE_COLUMNS
from robust_transfer.study.store import RUN_TYPES

RUN_COLUMNS = tuple(RUN_TYPES)
EPOCH_REQUIRED = ("run_id", "epoch", "test_acc")

CELL_KEYS = ["source", "target", "n", "unfrozen_blocks", "epochs", "seed"]
NATURAL_LABEL = "natural"
_INT_COLUMNS, _FLOAT_COLUMNS, _STR_COLUMNS = (
    tuple(c for c, t in RUN_TYPES.items() if t is kind) for kind in (int, float, str))
# columns that change how a run trains: if one differs between runs, comparisons mix
# recipes. The store's, plus ones other code's result files use.
VARYING_RECIPE_COLUMNS = (*STORE_RECIPE_COLUMNS, "arch", "optimizer", "lr_schedule",
                          "input_size", "train_bn")
ALL_LABEL = "all"  # n or unfrozen blocks: the whole training set / every block


@dataclass(frozen=True)
class Coverage:
    """How much of the study the analysis saw.

    Attributes:
        finished: finished runs analysed.
        total: runs the study defines, when the producer said so (else ``None``).
        excluded: rows present in the input but not finished (other status, no accuracy).
    """

    finished: int
    total: int | None = None
    excluded: int = 0

    @property
    def missing(self) -> int | None:
        """Runs not (yet) available for analysis, when the total is known."""
        return None if self.total is None else max(self.total - self.finished, 0)

    def sentence(self) -> str:
        """One line for the report, e.g. "120 of 150 runs finished (30 missing)"."""
        if self.total is None:
            text = f"{self.finished} finished runs"
        else:
            text = f"{self.finished} of {self.total} runs finished ({self.missing} missing)"
        if self.excluded:
            text += f"; {self.excluded} unfinished rows ignored"
        return text


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """Raise :class:`ConfigError` naming every column of ``columns`` that ``frame`` lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"{what} is missing column(s): {', '.join(missing)} "
                          f"(needs {', '.join(columns)})")


def prepare_runs(runs: pd.DataFrame, total: int | None = None, *,
                 by_rate: bool = False) -> tuple[pd.DataFrame, Coverage]:
    """Check a runs frame against the contract and keep the finished runs.

    Codes other code's logs use are read with their meaning made explicit: ``-1`` for n
    or unfrozen blocks means ``"all"``.

    Args:
        runs: one row per run (see :mod:`robust_transfer.analysis` for the columns).
        total: number of runs the study defines, if the producer knows it.
        by_rate: allow one run per cell, seed *and* learning rate (``lr``), as a study
            that tunes the rate has; the caller then picks the runs of one rate
            (:func:`~.tuning.shared_rate_runs`).

    Returns:
        The finished runs with normalised dtypes, and a :class:`Coverage`.

    Raises:
        ConfigError: missing or duplicate columns, text where numbers belong, a finished
            run without accuracy, accuracies outside [0, 1], a source label with two eps
            values, or two runs for the same cell and seed.
    """
    require_columns(runs, RUN_COLUMNS, "runs frame")
    dup_cols = runs.columns[runs.columns.duplicated()].unique()
    if len(dup_cols):
        raise ConfigError(f"runs have duplicate column(s) {', '.join(map(str, dup_cols))}; "
                          "keep one of each")
    frame = runs.copy()
    keep = pd.Series(True, index=frame.index)
    if "status" in frame.columns:
        keep = frame["status"].astype(str) == "finished"
    excluded = int((~keep).sum())
    frame = _coerce_runs(frame[keep].reset_index(drop=True))
    _check_runs(frame, [*CELL_KEYS, "lr"] if by_rate and "lr" in frame.columns else CELL_KEYS)
    return frame, Coverage(finished=len(frame), total=total, excluded=excluded)


def _numbers(frame: pd.DataFrame, col: str) -> pd.Series:
    values = pd.to_numeric(frame[col], errors="coerce")
    text = values.isna() & frame[col].notna() & (frame[col].astype(str).str.strip() != "")
    if text.any():
        raise ConfigError(f"column '{col}' must hold numbers, found '{frame.loc[text, col].iloc[0]}'"
                          f" in {int(text.sum())} row(s)")
    return values


def _coerce_runs(frame: pd.DataFrame) -> pd.DataFrame:
    frame["unfrozen_blocks"] = [unfrozen_label(v) for v in frame["unfrozen_blocks"]]
    frame["n_label"] = [read_n_label(v) for v in frame["n_label"]]
    for col in _INT_COLUMNS:
        values = _numbers(frame, col)
        if values.isna().any() or (values != values.round()).any() or (values < 0).any():
            bad = frame.loc[values.isna() | (values != values.round()) | (values < 0), col].iloc[0]
            raise ConfigError(f"column '{col}' must hold whole numbers >= 0, found '{bad}'")
        frame[col] = values.astype("int64")
    for col in ("n", "epochs"):
        if (frame[col] < 1).any():
            raise ConfigError(f"column '{col}' must be at least 1, found "
                              f"{int(frame.loc[frame[col] < 1, col].iloc[0])} (for the full "
                              "training set use n_label 'all' with the number of images as n)")
    for col in _STR_COLUMNS:
        frame[col] = frame[col].astype(str)
    for col in _FLOAT_COLUMNS:
        frame[col] = _numbers(frame, col).astype(float)
    return frame


def unfrozen_label(value: object) -> str:
    """The unfrozen-blocks label: ``"0"``, ``"1"``, ..., or ``"all"`` (also for ``-1``).

    Raises:
        ConfigError: neither a whole number >= -1 nor ``all``.
    """
    text = str(value).strip().lower()
    if text in (ALL_LABEL, "-1", "-1.0"):
        return ALL_LABEL
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not number >= 0 or number != round(number):
        raise ConfigError(f"unfrozen_blocks must be a number of blocks (0 = head only) or 'all' "
                          f"(-1 is read as all), found '{value}'")
    return str(int(number))


def read_n_label(value: object) -> str:
    """The requested-n label (:func:`~robust_transfer.models.finetune.n_label`) of a value
    other code wrote: ``-1`` or ``all`` -> ``"all"``, ``200.0`` -> ``"200"``; other text as
    given."""
    text = str(value).strip().lower()
    if text in (ALL_LABEL, "-1", "-1.0"):
        return n_label(None)
    try:
        number = float(text)
    except ValueError:
        return text
    return n_label(int(number)) if number == round(number) else text


def _check_runs(frame: pd.DataFrame, keys: list[str]) -> None:
    acc = frame["test_acc"]
    if acc.isna().any():
        row = frame.loc[acc.isna(), CELL_KEYS].iloc[0].to_dict()
        raise ConfigError(f"{int(acc.isna().sum())} finished run(s) have no test_acc (NaN), "
                          f"e.g. {row}; drop them or mark them with a status other than "
                          "'finished'")
    if ((acc < 0) | (acc > 1)).any():
        bad = acc[(acc < 0) | (acc > 1)].iloc[0]
        raise ConfigError(f"test_acc must be a fraction in [0, 1], found {bad:g} "
                          "(divide percentages by 100)")
    eps_per_source = frame.groupby("source")["source_eps"].nunique()
    if (eps_per_source > 1).any():
        raise ConfigError(f"source label(s) {', '.join(eps_per_source[eps_per_source > 1].index)}"
                          " have several eps values; give each source its own label")
    dup = frame.duplicated(keys, keep=False)
    if dup.any():
        row = frame.loc[dup, keys].iloc[0].to_dict()
        raise ConfigError(f"{int(dup.sum())} runs share a ({', '.join(keys)}), e.g. {row}; "
                          "they would be mixed: filter the frame "
                          "so each cell and seed has one run (per-epoch rows belong in the "
                          "epochs frame: CLI --epochs-csv)")


def recipe_variation(runs: pd.DataFrame) -> dict[str, list[str]]:
    """Recipe columns (:data:`VARYING_RECIPE_COLUMNS`) whose value differs between runs.

    A comparison mixes recipes when, say, ``lr`` differs between sources; the report
    lists these so the reader can tell.
    """
    varying = {}
    for col in (c for c in VARYING_RECIPE_COLUMNS if c in runs.columns):
        values = runs[col].dropna().astype(str).unique()
        if len(values) > 1:
            varying[col] = sorted(values)[:8]
    return varying


def prepare_epochs(epochs: pd.DataFrame | None, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch rows of the analysed runs, with evaluated epochs only (last row per epoch).

    Args:
        epochs: one row per (run_id, epoch), or ``None``.
        runs: the prepared runs frame; rows of other runs are dropped.

    Raises:
        ConfigError: required columns are missing.
    """
    if epochs is None or len(epochs) == 0:
        return pd.DataFrame({"run_id": pd.Series(dtype=str), "epoch": pd.Series(dtype="int64"),
                             "test_acc": pd.Series(dtype=float)})
    require_columns(epochs, EPOCH_REQUIRED, "epochs frame")
    frame = epochs.copy()
    frame["run_id"] = frame["run_id"].astype(str)
    frame["epoch"] = pd.to_numeric(frame["epoch"], errors="raise").astype("int64")
    frame["test_acc"] = pd.to_numeric(frame["test_acc"], errors="coerce").astype(float)
    keep = frame["run_id"].isin(set(runs["run_id"])) & frame["test_acc"].notna()
    # a resumed run may log an epoch twice: the later row is the one its weights came from
    frame = frame[keep].drop_duplicates(["run_id", "epoch"], keep="last")
    return frame.reset_index(drop=True)


def resolve_baseline(runs: pd.DataFrame, baseline: str | None = None) -> str:
    """The source label every other source is compared with.

    Without ``baseline``: the one source with eps 0, else the label ``natural``.

    Raises:
        UnknownNameError: ``baseline`` is not a source label of ``runs``.
        RobustTransferError: no source qualifies, or several do; the message lists the
            labels to choose from.
    """
    labels = sorted(runs["source"].unique())
    if baseline is not None:
        if baseline not in labels:
            raise UnknownNameError(f"baseline '{baseline}' is not a source; sources: "
                                   f"{', '.join(labels)}")
        return baseline
    natural = sorted(runs.loc[runs["source_eps"] == 0, "source"].unique())
    if len(natural) == 1:
        return natural[0]
    if NATURAL_LABEL in labels:
        return NATURAL_LABEL
    if natural:
        raise RobustTransferError(f"several sources have eps 0 ({', '.join(natural)}); choose "
                                  "the baseline with baseline=LABEL (CLI: --baseline LABEL)")
    raise RobustTransferError(f"no natural (eps 0) source to compare with among "
                              f"{', '.join(labels)}; mark the baseline with baseline=LABEL "
                              "(CLI: --baseline LABEL) or label it 'natural'")


def source_table(runs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """One row per source label: ``source, eps, norm, name, is_baseline``, baseline first.

    ``name`` is the display name ("L2 eps 0.5", "Linf eps 4/255", "natural").
    """
    src = runs.groupby("source", as_index=False).agg(eps=("source_eps", "first"),
                                                     norm=("source_norm", "first"))
    src["name"] = [display_name(s, e, m)
                   for s, e, m in zip(src["source"], src["eps"], src["norm"], strict=True)]
    src["is_baseline"] = src["source"] == baseline
    src["_eps"] = src["eps"].fillna(np.inf)
    src = src.sort_values(["is_baseline", "norm", "_eps", "source"],
                          ascending=[False, True, True, True])
    return src.drop(columns="_eps").reset_index(drop=True)


def display_name(label: str, eps: float, norm: str) -> str:
    """Human name of a source: "natural", "L2 eps 3", "Linf eps 4/255", or its label."""
    if eps is None or math.isnan(eps) or norm not in ("l2", "linf", "none"):
        return label
    if eps == 0:
        return label
    if norm == "linf":
        k = eps * 255
        if abs(k - round(k)) < 1e-6:
            return f"Linf eps {round(k)}/255"
        return f"Linf eps {eps:g}"
    return f"L2 eps {eps:g}" if norm == "l2" else label


def unfrozen_key(label: str) -> float:
    """Sort key for unfrozen-block labels: numbers ascending, ``all`` last."""
    try:
        return float(label)
    except ValueError:
        return math.inf


def unfrozen_text(label: str) -> str:
    """"head only", "last block", "last 3 blocks", "all blocks"."""
    if label == "0":
        return "head only"
    if label == ALL_LABEL:
        return "all blocks"
    return "last block" if label == "1" else f"last {label} blocks"


def load_study(study_dir: str | Path) -> StudyResults:
    """Read a study directory (:func:`~robust_transfer.study.results.read_study`), with the
    attack that measured each source's robust accuracy as text ("PGD-20 Linf 8/255").

    Raises:
        ConfigError: the directory does not exist or holds no study.
    """
    study = read_study(study_dir)
    info = study.source_info
    if info is not None:
        info = info.assign(robust_eval=[_attack_text(a) for a in info["robust_eval"]])
    return replace(study, source_info=info)


def _attack_text(attack: object) -> str:
    if not isinstance(attack, dict) or not attack.get("norm"):
        return ""
    try:
        eps = float(attack.get("eps"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        eps = math.nan
    return (f"{str(attack.get('method', 'pgd')).upper()}-{attack.get('steps', '?')} "
            f"{display_name('', eps, str(attack['norm'])).replace(' eps', '')}".strip())
