"""Find runs of a study by what produced them, and read one run whole (no torch needed).

``study runs DIR --where source=natural n=200`` and ``study show ID`` are these functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robust_transfer.errors import ConfigError
from robust_transfer.registry import did_you_mean
from robust_transfer.study.store import RECIPE_COLUMNS, StudyStore

# what --where may filter on; "n" is the requested number of images, as in specs
FILTERS = {"run_id": "run_id", "status": "status", "source": "source", "eps": "source_eps",
           "norm": "source_norm", "target": "target", "n": "n_label",
           "unfrozen_blocks": "unfrozen_blocks", "unfrozen": "unfrozen_blocks",
           "epochs": "epochs", "seed": "seed", **{c: c for c in RECIPE_COLUMNS}}
LISTED = ("run_id", "status", "source", "target", "n_label", "unfrozen_blocks", "epochs", "seed",
          "test_acc", "seconds")


def parse_where(terms: list[str]) -> dict[str, str]:
    """``["source=natural", "n=200"]`` -> ``{"source": "natural", "n": "200"}``.

    Raises:
        ConfigError: a term without ``=`` or an unknown key (close keys suggested).
    """
    out: dict[str, str] = {}
    for term in terms:
        key, sep, value = term.partition("=")
        if not sep or not key:
            raise ConfigError(f"--where terms are KEY=VALUE, got '{term}'")
        if key not in FILTERS:
            raise ConfigError(f"unknown run field '{key}'{did_you_mean(key, FILTERS)}; valid: "
                              f"{', '.join(FILTERS)}")
        out[key] = value
    return out


def find_runs(study_dir: str | Path, where: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Runs whose fields equal the given values (compared as text: ``lr=0.1``, ``n=all``).

    Args:
        study_dir: the study directory.
        where: field -> value (keys of :data:`FILTERS`); ``run_id`` matches a prefix.

    Returns:
        One dict per run with the :data:`LISTED` fields, in planning order.

    Raises:
        ConfigError: no study there, or an unknown field.
    """
    clauses, params = [], []
    for key, value in (where or {}).items():
        if key not in FILTERS:
            raise ConfigError(f"unknown run field '{key}'; valid: {', '.join(FILTERS)}")
        if key == "run_id":
            clauses.append("run_id LIKE ?")
            params.append(value + "%")
        else:  # the column names come from FILTERS, never from the user
            clauses.append(f"CAST({FILTERS[key]} AS TEXT) = ?")
            params.append(value)
    sql = f"SELECT {', '.join(LISTED)} FROM runs"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    with StudyStore(study_dir, readonly=True) as store:
        rows = store.conn.execute(sql + " ORDER BY rowid", params).fetchall()
    return [dict(zip(LISTED, row, strict=True)) for row in rows]


def show_run(study_dir: str | Path, run_id: str) -> dict[str, Any]:
    """Everything the store holds about one run: config, results, source, epochs, error.

    Args:
        study_dir: the study directory.
        run_id: the id or a unique prefix.

    Raises:
        ConfigError: no such run, or an ambiguous prefix.
    """
    with StudyStore(study_dir, readonly=True) as store:
        cursor = store.conn.execute("SELECT * FROM runs WHERE run_id LIKE ?", (run_id + "%",))
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
        if not rows:
            raise ConfigError(f"run '{run_id}' is not in {study_dir}; "
                              f"`robust-transfer study runs {study_dir}` lists the run ids")
        if len(rows) > 1:
            raise ConfigError(f"run id prefix '{run_id}' matches {len(rows)} runs; give more digits")
        run = dict(zip(columns, rows[0], strict=True))
        cursor = store.conn.execute("SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch",
                                    (run["run_id"],))
        epoch_cols = [d[0] for d in cursor.description]
        epochs = [dict(zip(epoch_cols, r, strict=True)) for r in cursor.fetchall()]
        source = store.sources().get(run["source"])
    run["config"] = json.loads(run["config"])
    return {"run": run, "source": source, "epochs": epochs}
