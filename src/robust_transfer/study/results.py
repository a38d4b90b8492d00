"""Everything the analysis reads from a study directory, in one call: :func:`read_study`.

The analysis runs no SQL and opens no checkpoint file: the runs and epochs come from the
store (:func:`~robust_transfer.study.store.load_results`), the evaluation recipe of runs
that measured validation or robust accuracy from their stored configs, and the sources'
accuracies from their checkpoints' checked metadata
(:func:`~robust_transfer.models.metadata.read_metadata`, which reads no weights).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust_transfer.engine import recipe as recipe_fields
from robust_transfer.errors import CheckpointError, ConfigError
from robust_transfer.study import store

if TYPE_CHECKING:
    import pandas as pd

# Recipe fields of the evaluations after training, with the values a recipe that leaves
# them out means (the defaults of robust_transfer.engine.recipe.Recipe's field specs)
EVALUATION_DEFAULTS: dict[str, Any] = {k: recipe_fields.defaults()[k] for k in (
    "val_images", "robust_norm", "robust_eps", "robust_steps", "robust_images")}
SOURCE_INFO_COLUMNS = ("source", "arch", "norm", "eps", "clean_acc", "robust_acc",
                       "robust_eval", "checkpoint")


@dataclass(frozen=True)
class StudyResults:
    """What a study directory holds for the analysis.

    Attributes:
        runs: the finished runs (contract in :mod:`robust_transfer.analysis`), typed,
            with the evaluation recipe (:data:`EVALUATION_DEFAULTS`) when some run
            measured validation or robust accuracy.
        epochs: their per-epoch rows.
        total_runs: runs the study defines.
        spec_text: the study specification's text (several joined by ``---``).
        source_info: one row per pinned source (:data:`SOURCE_INFO_COLUMNS`).
    """

    runs: pd.DataFrame
    epochs: pd.DataFrame | None = None
    total_runs: int | None = None
    spec_text: str | None = None
    source_info: pd.DataFrame | None = None


def read_study(study_dir: str | Path) -> StudyResults:
    """Read a study directory for the analysis.

    Raises:
        ConfigError: the directory does not exist or holds no study.
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise ConfigError(f"study directory {study_dir} does not exist")
    runs, epochs = store.load_results(study_dir)
    with store.StudyStore(study_dir, readonly=True) as db:
        pinned = db.sources()
        runs = _with_evaluation_recipe(db, runs)
    return StudyResults(runs=runs, epochs=epochs, total_runs=store.study_status(study_dir).total,
                        spec_text=store.spec_text(study_dir) or None,
                        source_info=source_metadata(pinned))


def _with_evaluation_recipe(db: store.StudyStore, runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` plus the validation and robust-evaluation recipe (``val_images``,
    ``robust_norm``, ``robust_eps``, ``robust_steps``, ``robust_images``), read from the
    runs' configs, when some run measured validation or robust accuracy (else unchanged).
    """
    import pandas as pd

    measured = [c for c in ("val_acc", "robust_acc") if c in runs and runs[c].notna().any()]
    if not measured:
        return runs
    where = " OR ".join(f"{c} IS NOT NULL" for c in measured)
    rows = []
    for run_id, config in db.conn.execute(f"SELECT run_id, config FROM runs WHERE "
                                          f"status='finished' AND ({where})"):
        try:
            recipe = json.loads(config).get("recipe") or {}
        except (json.JSONDecodeError, AttributeError):
            recipe = {}
        rows.append({"run_id": run_id, **{k: recipe.get(k, d) for k, d in
                                          EVALUATION_DEFAULTS.items()}})
    extra = pd.DataFrame(rows, columns=["run_id", *EVALUATION_DEFAULTS])
    extra.loc[extra["robust_eps"].isna(), ["robust_norm", "robust_steps", "robust_images"]] = None
    return runs.merge(extra, on="run_id", how="left")


def source_metadata(pinned: dict[str, dict]) -> pd.DataFrame:
    """The sources table of a study: architecture, norm, eps and the checkpoint's accuracies.

    Args:
        pinned: the store's ``sources()`` (label -> ``model, path, arch, eps, norm``, ...).

    Returns:
        One row per source with :data:`SOURCE_INFO_COLUMNS`; ``clean_acc`` and
        ``robust_acc`` come from the checkpoint's checked metadata (NaN when it has none,
        as a published or timm checkpoint), ``robust_eval`` describes the attack that
        measured the robust accuracy.
    """
    import pandas as pd

    rows = []
    for label, info in sorted(pinned.items()):
        meta = _checkpoint_metadata(info.get("path"))
        rows.append({"source": label, "arch": info.get("arch") or meta.get("arch", ""),
                     "norm": info.get("norm") or meta.get("norm", ""),
                     "eps": _float(info.get("eps", meta.get("eps"))),
                     "clean_acc": _float(meta.get("clean_acc")),
                     "robust_acc": _float(meta.get("robust_acc")),
                     "robust_eval": meta.get("robust_eval"),
                     "checkpoint": info.get("model") or Path(str(info.get("path", ""))).name})
    return pd.DataFrame(rows, columns=list(SOURCE_INFO_COLUMNS))


def _checkpoint_metadata(path: object) -> dict[str, Any]:
    from robust_transfer.models.metadata import is_ours, read_metadata

    if not path or not is_ours(str(path)):
        return {}
    try:
        return read_metadata(str(path))
    except CheckpointError:
        return {}  # published checkpoints have no sidecar: the table shows what the store knows


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
