"""Results of other code: runs and per-epoch CSVs, and the codes real logs use.

A runs CSV has one row per fine-tuning run: ``source, target, n, unfrozen_blocks, epochs,
seed, test_acc`` and optionally ``eps``, ``norm``, ``run_id``, ``status`` and recipe
columns. An epochs CSV has one row per (run, epoch): ``run_id, epoch, test_acc``; its
runs must be in the runs CSV. Codes accepted, with their meaning written into the
report's notes: ``n`` of ``-1`` or ``all`` (the full training set: the number of images
comes from a ``n_used`` column or ``n_all={target: size}``), ``unfrozen_blocks`` of ``-1``
or ``all``, and Linf eps written in 1/255 units (any Linf eps above 1, which no pixel-space
radius in [0, 1] can be, marks the whole column as 1/255 units).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from robust_transfer.analysis.frames import (
    ALL_LABEL,
    NATURAL_LABEL,
    read_n_label,
    require_columns,
)
from robust_transfer.errors import ConfigError

CSV_COLUMNS = ("source", "target", "n", "unfrozen_blocks", "epochs", "seed", "test_acc")
NOTES_ATTR = "robust_transfer_notes"  # frame.attrs key: how codes of the file were read
GENERATED_IDS_ATTR = "robust_transfer_generated_ids"  # the CSV had no run_id column


def read_csv_checked(path: str | Path, what: str) -> pd.DataFrame:
    """Read a CSV, refusing a missing file, an unparsable one and duplicate column names.

    Raises:
        ConfigError: any of those, naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder, not a CSV file; pass the file itself"
                          + (" (a study folder is analysed as DIR, without --csv)"
                             if (path / "study.db").exists() else ""))
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            csv.Error) as err:
        raise ConfigError(f"cannot read {path} as CSV: {str(err).strip()}") from None
    names = [h.strip() for h in header]
    dups = sorted({h for h in names if names.count(h) > 1})
    if dups:
        raise ConfigError(f"{path.name} has duplicate column(s) {', '.join(dups)}; keep one of each")
    return frame


def read_runs_csv(path: str | Path, n_all: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Import results of other code as a runs frame.

    Args:
        path: the CSV (see the module docstring for its columns and codes).
        n_all: number of training images ``n = all`` stands for, per target (used when
            the file has no ``n_used`` column).

    Returns:
        The runs frame; ``frame.attrs[NOTES_ATTR]`` lists how codes were read.

    Raises:
        ConfigError: the file does not exist, cannot be parsed, lacks columns, holds
            per-epoch rows, or uses ``n = all`` without saying how many images that is.
    """
    path = Path(path)
    frame = read_csv_checked(path, "CSV file")
    require_csv_columns(frame, CSV_COLUMNS, f"CSV {path.name}")
    _refuse_epoch_rows(frame, path.name)
    _refuse_duplicate_ids(frame, path.name)
    notes: list[str] = []
    generated = "run_id" not in frame.columns
    frame = _csv_to_runs(frame, path.stem, dict(n_all or {}), notes)
    frame.attrs[NOTES_ATTR] = notes
    frame.attrs[GENERATED_IDS_ATTR] = generated
    return frame


def require_csv_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """:func:`require_columns`, saying when a header differs only in case or spaces.

    Raises:
        ConfigError: a column is missing; the header names that nearly match are listed.
    """
    missing = [c for c in columns if c not in frame.columns]
    near = {str(h): c for h in frame.columns for c in missing if str(h).strip().lower() == c}
    if near:
        pairs = ", ".join(f"'{h}' -> '{c}'" for h, c in near.items())
        raise ConfigError(f"{what} is missing column(s): {', '.join(missing)}; column names "
                          f"are matched exactly (lower case, no spaces): rename {pairs}")
    require_columns(frame, columns, what)


def _refuse_duplicate_ids(frame: pd.DataFrame, name: str) -> None:
    if "run_id" not in frame.columns:
        return
    ids = frame["run_id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ConfigError(f"{name}: run_id '{dup.iloc[0]}' is on {int((ids == dup.iloc[0]).sum())} "
                          f"rows ({dup.nunique()} id(s) repeated); each run needs its own id")


def _refuse_epoch_rows(frame: pd.DataFrame, name: str) -> None:
    keys = [c for c in CSV_COLUMNS if c != "test_acc"]
    per_run = frame.groupby(keys, dropna=False).size()
    if "epoch" in frame.columns and (per_run > 1).any():
        raise ConfigError(f"{name} has an 'epoch' column and {int(per_run.max())} rows per run: "
                          "these are per-epoch rows; pass them with --epochs-csv (columns run_id, "
                          "epoch, test_acc) and one row per run with --csv")


def _csv_to_runs(frame: pd.DataFrame, stem: str, n_all: dict[str, int],
                 notes: list[str]) -> pd.DataFrame:
    frame = frame.rename(columns={"eps": "source_eps", "norm": "source_norm"})
    if "source_eps" not in frame.columns:
        is_nat = frame["source"].astype(str) == NATURAL_LABEL
        frame["source_eps"] = np.where(is_nat, 0.0, np.nan)
    if "source_norm" not in frame.columns:
        frame["source_norm"] = np.where(frame["source_eps"] == 0, "none", "unknown")
    frame["source_norm"] = frame["source_norm"].fillna("none").astype(str).str.lower()
    _linf_units(frame, notes)
    frame["n_label"] = [read_n_label(v) for v in frame["n"]]
    _n_all(frame, n_all, notes)
    if "run_id" not in frame.columns:
        frame["run_id"] = [f"{stem}-{i}" for i in range(len(frame))]
    codes = frame["unfrozen_blocks"].astype(str).str.strip()
    if codes.isin(["-1", "-1.0"]).any():
        notes.append("unfrozen_blocks -1 read as 'all' (every block trained)")
    return frame


def _linf_units(frame: pd.DataFrame, notes: list[str]) -> None:
    eps = pd.to_numeric(frame["source_eps"], errors="coerce")
    linf = frame["source_norm"] == "linf"
    if (linf & (eps > 1)).any():
        frame["source_eps"] = np.where(linf, eps / 255, eps)
        values = ", ".join(f"{v:g}" for v in sorted(eps[linf].dropna().unique()))
        notes.append(f"Linf eps read in 1/255 units (values {values} mean {values} / 255): "
                     "a Linf eps above 1 cannot be a pixel-space radius")


def _n_all(frame: pd.DataFrame, n_all: dict[str, int], notes: list[str]) -> None:
    is_all = frame["n_label"] == ALL_LABEL
    if not is_all.any():
        return
    if "n_used" in frame.columns:
        frame["n"] = np.where(is_all, frame["n_used"], frame["n"])
        notes.append("n = all (or -1) read as the full training set; its size from column n_used")
        return
    missing = sorted(set(frame.loc[is_all, "target"].astype(str)) - set(n_all))
    if missing:
        raise ConfigError(f"n = all (or -1) in {int(is_all.sum())} row(s) of target(s) "
                          f"{', '.join(missing)}: the analysis needs the number of images it "
                          f"stands for; add a column n_used or pass --n-all "
                          f"{missing[0]}=SIZE")
    frame["n"] = np.where(is_all, frame["target"].astype(str).map(n_all), frame["n"])
    sizes = ", ".join(f"{t}: {n_all[t]:,}" for t in sorted(set(frame.loc[is_all, "target"])))
    notes.append(f"n = all (or -1) read as the full training set ({sizes} images)")


def read_epochs_csv(path: str | Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch rows of other code, checked against the runs they belong to.

    Args:
        path: CSV with ``run_id, epoch, test_acc`` (more columns are kept).
        runs: the runs frame (from :func:`read_runs_csv`).

    Raises:
        ConfigError: missing columns, text in number columns, or run ids that are not
            in ``runs`` (or ``runs`` came without a ``run_id`` column).
    """
    path = Path(path)
    frame = read_csv_checked(path, "epochs CSV")
    require_csv_columns(frame, ("run_id", "epoch", "test_acc"), f"epochs CSV {path.name}")
    for col in ("epoch", "test_acc"):
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            raise ConfigError(f"{path.name}: column '{col}' must hold numbers, found "
                              f"'{frame.loc[bad, col].iloc[0]}'")
    frame["run_id"] = frame["run_id"].astype(str)
    known = set(runs["run_id"].astype(str))
    unknown = sorted(set(frame["run_id"]) - known)
    if unknown:
        hint = ("the runs CSV has no run_id column, so no epoch row can match; add one"
                if runs.attrs.get(GENERATED_IDS_ATTR) else
                "pass the runs CSV these epochs belong to")
        raise ConfigError(f"{len(unknown)} run_id(s) of {path.name} are not in the runs CSV "
                          f"(e.g. '{unknown[0]}'); {hint}")
    _check_epoch_numbers(frame, runs, path.name)
    return frame


def _check_epoch_numbers(frame: pd.DataFrame, runs: pd.DataFrame, name: str) -> None:
    """Epochs are whole numbers from 1 to the run's ``epochs``, each at most once per run."""
    epoch = pd.to_numeric(frame["epoch"], errors="coerce")
    budget = frame["run_id"].map(dict(zip(runs["run_id"].astype(str),
                                          pd.to_numeric(runs["epochs"], errors="coerce"),
                                          strict=True)))
    bad = epoch.isna() | (epoch != epoch.round()) | (epoch < 1) | (epoch > budget)
    if bad.any():
        i = bad.idxmax()
        raise ConfigError(f"{name}: run '{frame.at[i, 'run_id']}' has epoch {frame.at[i, 'epoch']}, "
                          f"but its runs CSV row says epochs {budget[i]:g}; epochs count from 1 "
                          "to the run's epochs")
    twice = frame.duplicated(["run_id", "epoch"])
    if twice.any():
        i = twice.idxmax()
        raise ConfigError(f"{name}: run '{frame.at[i, 'run_id']}' has epoch {frame.at[i, 'epoch']} "
                          "on more than one row; keep one row per run and epoch")
