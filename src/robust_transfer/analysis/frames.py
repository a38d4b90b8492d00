"""The input frames: checking the contract, CSV import, sources and the baseline.

Everything downstream assumes frames that passed :func:`prepare_runs` and
:func:`prepare_epochs`: contract columns present with fixed dtypes, only finished runs,
at most one run per (source, target, n, unfrozen_blocks, epochs, seed).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from robust_transfer.errors import ConfigError, RobustTransferError, UnknownNameError

RUN_COLUMNS = ("run_id", "source", "source_eps", "source_norm", "target", "n", "n_label",
               "unfrozen_blocks", "epochs", "seed", "test_acc")
EPOCH_COLUMNS = ("run_id", "epoch", "test_acc")
CSV_COLUMNS = ("source", "target", "n", "unfrozen_blocks", "epochs", "seed", "test_acc")
CELL_KEYS = ["source", "target", "n", "unfrozen_blocks", "epochs", "seed"]
NATURAL_LABEL = "natural"
_INT_COLUMNS = ("n", "epochs", "seed")
_STR_COLUMNS = ("run_id", "source", "source_norm", "target", "n_label", "unfrozen_blocks")
# columns that change how a run trains: if one differs between runs, comparisons mix recipes
RECIPE_COLUMNS = ("arch", "lr", "momentum", "weight_decay", "optimizer", "schedule",
                  "lr_schedule", "batch_size", "augment", "resolution", "input_size",
                  "head_init", "train_bn")


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


def prepare_runs(runs: pd.DataFrame, total: int | None = None) -> tuple[pd.DataFrame, Coverage]:
    """Check a runs frame against the contract and keep the finished runs.

    Args:
        runs: one row per run (see :mod:`robust_transfer.analysis` for the columns).
        total: number of runs the study defines, if the producer knows it.

    Returns:
        The finished runs with normalised dtypes, and a :class:`Coverage`.

    Raises:
        ConfigError: missing columns, accuracies outside [0, 1], a source label with two
            eps values, or two runs for the same cell and seed.
    """
    require_columns(runs, RUN_COLUMNS, "runs frame")
    frame = runs.copy()
    keep = frame["test_acc"].notna()
    if "status" in frame.columns:
        keep &= frame["status"].astype(str) == "finished"
    excluded = int((~keep).sum())
    frame = _coerce_runs(frame[keep].reset_index(drop=True))
    _check_runs(frame)
    return frame, Coverage(finished=len(frame), total=total, excluded=excluded)


def _coerce_runs(frame: pd.DataFrame) -> pd.DataFrame:
    for col in _INT_COLUMNS:
        values = pd.to_numeric(frame[col], errors="coerce")
        if values.isna().any() or (values != values.round()).any():
            bad = frame.loc[values.isna() | (values != values.round()), col].iloc[0]
            raise ConfigError(f"column '{col}' must hold whole numbers, found '{bad}'")
        frame[col] = values.astype("int64")
    for col in _STR_COLUMNS:
        frame[col] = frame[col].astype(str)
    frame["source_eps"] = pd.to_numeric(frame["source_eps"], errors="coerce").astype(float)
    acc = pd.to_numeric(frame["test_acc"], errors="coerce").astype(float)
    text = acc.isna() & frame["test_acc"].notna()
    if text.any():  # a word where a number belongs: refuse, do not read it as missing
        raise ConfigError(f"column 'test_acc' must hold numbers, found "
                          f"'{frame.loc[text, 'test_acc'].iloc[0]}'")
    frame["test_acc"] = acc
    return frame


def _check_runs(frame: pd.DataFrame) -> None:
    acc = frame["test_acc"]
    if ((acc < 0) | (acc > 1)).any():
        bad = acc[(acc < 0) | (acc > 1)].iloc[0]
        raise ConfigError(f"test_acc must be a fraction in [0, 1], found {bad:g} "
                          "(divide percentages by 100)")
    eps_per_source = frame.groupby("source")["source_eps"].nunique()
    if (eps_per_source > 1).any():
        raise ConfigError(f"source label(s) {', '.join(eps_per_source[eps_per_source > 1].index)}"
                          " have several eps values; give each source its own label")
    dup = frame.duplicated(CELL_KEYS, keep=False)
    if dup.any():
        row = frame.loc[dup, CELL_KEYS].iloc[0].to_dict()
        raise ConfigError(f"{int(dup.sum())} runs share a (source, target, n, unfrozen_blocks, "
                          f"epochs, seed), e.g. {row}; they would be mixed: filter the frame "
                          "so each cell and seed has one run")


def recipe_variation(runs: pd.DataFrame) -> dict[str, list[str]]:
    """Recipe columns (:data:`RECIPE_COLUMNS`) whose value differs between runs.

    A comparison mixes recipes when, say, ``lr`` differs between sources; the report
    lists these so the reader can tell.
    """
    varying = {}
    for col in (c for c in RECIPE_COLUMNS if c in runs.columns):
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
    require_columns(epochs, EPOCH_COLUMNS, "epochs frame")
    frame = epochs.copy()
    frame["run_id"] = frame["run_id"].astype(str)
    frame["epoch"] = pd.to_numeric(frame["epoch"], errors="raise").astype("int64")
    frame["test_acc"] = pd.to_numeric(frame["test_acc"], errors="coerce").astype(float)
    keep = frame["run_id"].isin(set(runs["run_id"])) & frame["test_acc"].notna()
    # a resumed run may log an epoch twice: the later row is the one its weights came from
    frame = frame[keep].drop_duplicates(["run_id", "epoch"], keep="last")
    return frame.reset_index(drop=True)


def read_runs_csv(path: str | Path) -> pd.DataFrame:
    """Import results of other code as a runs frame.

    The CSV needs columns ``source, target, n, unfrozen_blocks, epochs, seed, test_acc``
    and may have ``eps`` and ``norm`` (``l2``/``linf``/``none``) and any recipe columns.
    Without ``eps``, only a source labelled ``natural`` is known to be the baseline.

    Raises:
        ConfigError: the file does not exist, cannot be parsed or lacks columns.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"CSV file {path} does not exist")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path} as CSV: {' '.join(str(err).split())}") from None
    _refuse_duplicate_columns(path)
    require_columns(frame, CSV_COLUMNS, f"CSV {path.name}")
    return _csv_to_runs(frame, path.stem)


def _refuse_duplicate_columns(path: Path) -> None:
    """pandas renames a repeated column to ``name.1`` silently: which one is meant?"""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        header = [h.strip() for h in next(csv.reader(f), [])]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise ConfigError(f"{path} has the column(s) {', '.join(repeated)} more than once; "
                          "keep one of each")


def _csv_to_runs(frame: pd.DataFrame, stem: str) -> pd.DataFrame:
    frame = frame.rename(columns={"eps": "source_eps", "norm": "source_norm"})
    if "source_eps" not in frame.columns:
        is_nat = frame["source"].astype(str) == NATURAL_LABEL
        frame["source_eps"] = np.where(is_nat, 0.0, np.nan)
    if "source_norm" not in frame.columns:
        frame["source_norm"] = np.where(frame["source_eps"] == 0, "none", "unknown")
    frame["source_norm"] = frame["source_norm"].fillna("none").astype(str).str.lower()
    if "n_label" not in frame.columns:
        frame["n_label"] = frame["n"].astype(str)
    if "run_id" not in frame.columns:
        frame["run_id"] = [f"{stem}-{i}" for i in range(len(frame))]
    return frame


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
    """"head only", "last 1 block", "last 3 blocks", "all blocks"."""
    if label == "0":
        return "head only"
    if label == "all":
        return "all blocks"
    return f"last {label} block" + ("" if label == "1" else "s")


@dataclass
class StudyResults:
    """What the study store hands to the analysis.

    Attributes:
        runs: the runs frame (see :mod:`robust_transfer.analysis`).
        epochs: the epochs frame, or ``None``.
        total_runs: runs the study defines, if known.
        spec_text: the study specification's text, if known.
    """

    runs: pd.DataFrame
    epochs: pd.DataFrame | None = None
    total_runs: int | None = None
    spec_text: str | None = None


def load_study(study_dir: str | Path) -> StudyResults:
    """Read a study directory through ``robust_transfer.study.store``.

    ``load_results(dir)`` may return ``(runs, epochs)``, ``(runs, epochs, total_runs)``
    or an object (or dict) with ``runs``, ``epochs`` and optionally ``total_runs`` and
    ``spec_text``. Missing ones come from the store's ``study_status(dir).total`` and
    ``spec_text(dir)`` when it has them, else the spec is a single ``*.yaml`` in ``dir``.

    Raises:
        ConfigError: the directory does not exist.
        RobustTransferError: the study store is not part of this installation.
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise ConfigError(f"study directory {study_dir} does not exist")
    try:  # import_module honours sys.modules, so tests can stand in a store
        store = importlib.import_module("robust_transfer.study.store")
    except ImportError:
        store = None
    if store is None or not hasattr(store, "load_results"):
        raise RobustTransferError(
            "this installation has no study store (robust_transfer.study.store), so it "
            "cannot read study directories; export the results as CSV and use --csv FILE")
    results = _unpack(store.load_results(study_dir))
    _fill_from_store(results, store, study_dir)
    return results


def _fill_from_store(results: StudyResults, store: object, study_dir: Path) -> None:
    if results.total_runs is None and hasattr(store, "study_status"):
        results.total_runs = int(store.study_status(study_dir).total)
    if results.spec_text is None and hasattr(store, "spec_text"):
        results.spec_text = store.spec_text(study_dir) or None
    if results.spec_text is None:
        specs = sorted(study_dir.glob("*.yaml")) + sorted(study_dir.glob("*.yml"))
        if len(specs) == 1:
            results.spec_text = specs[0].read_text(encoding="utf-8")


def _unpack(obj: object) -> StudyResults:
    if isinstance(obj, StudyResults):
        return obj
    if isinstance(obj, tuple):
        return StudyResults(*obj)
    get = obj.get if isinstance(obj, dict) else lambda k, d=None: getattr(obj, k, d)
    total = get("total_runs", None)
    if total is None:
        total = get("total", None)
    return StudyResults(runs=get("runs"), epochs=get("epochs", None),
                        total_runs=None if total is None else int(total),
                        spec_text=get("spec_text", None))
