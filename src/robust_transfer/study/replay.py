"""Re-create the fine-tuned model of a finished study run from its stored config.

A study stores each run's fully resolved config and its source's checkpoint sha256, not
the fine-tuned weights (thousands of runs). Fine-tuning is seeded, so replaying the
config gives the run's model back: bit-identical on the CPU with the same torch build and
thread count (the study's runs use one thread), close on a GPU. The replayed test accuracy
is returned beside the stored one so the caller can check.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robust_transfer.data import ImageArrays
from robust_transfer.engine.transfer import FinetuneResult
from robust_transfer.errors import CheckpointError, ConfigError
from robust_transfer.models.sources import load_source, resolve_source
from robust_transfer.study.resolve import load_split
from robust_transfer.study.spec import RunConfig
from robust_transfer.study.store import StudyStore
from robust_transfer.study.worker import finetune_config


@dataclass
class ReplayedRun:
    """A study run fine-tuned again.

    Attributes:
        run_id: the run.
        config: its resolved config.
        result: the fine-tuning result (model, history, training indices).
        train, test: the target's splits (``train`` whole; the run used
            ``result.train_indices``).
        stored_test_acc: the accuracy the study recorded.
    """

    run_id: str
    config: RunConfig
    result: FinetuneResult
    train: ImageArrays
    test: ImageArrays
    stored_test_acc: float

    @property
    def accuracy_gap(self) -> float:
        """|replayed - stored| test accuracy (0 when the replay is exact)."""
        return abs(self.result.test_acc - self.stored_test_acc)


def find_run(study_dir: str | Path, run_id: str) -> tuple[str, RunConfig, dict[str, Any], float]:
    """The full run id, config, pinned source and stored accuracy of a finished run.

    ``run_id`` may be a unique prefix.

    Raises:
        ConfigError: no such run, an ambiguous prefix, or a run that has not finished.
    """
    with StudyStore(study_dir, readonly=True) as store:
        rows = store.conn.execute(
            "SELECT run_id, config, status, test_acc, source FROM runs WHERE run_id LIKE ?",
            (run_id + "%",)).fetchall()
        sources = store.sources()
    if not rows:
        raise ConfigError(f"run '{run_id}' is not in {study_dir}; "
                          f"`robust-transfer study export {study_dir}` lists the run ids")
    if len(rows) > 1:
        raise ConfigError(f"run id prefix '{run_id}' matches {len(rows)} runs; give more digits")
    rid, config, status, acc, source = rows[0]
    if status != "finished":
        raise ConfigError(f"run {rid} is {status}, not finished; finish the study first")
    return rid, RunConfig.from_dict(json.loads(config)), sources[source], float(acc)


def replay_run(study_dir: str | Path, run_id: str, data_root: str | None = None,
               device: str = "cpu") -> ReplayedRun:
    """Fine-tune a finished run again from its stored config (one CPU thread, as studies do).

    Raises:
        ConfigError: see :func:`find_run`.
        CheckpointError: the source checkpoint is gone or changed since the study ran.
    """
    rid, config, source, stored = find_run(study_dir, run_id)
    model = load_source(_pinned_record(source))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = finetune_config(config, model, source["sha256"], data_root, device)
    finally:
        torch.set_num_threads(threads)
    train = load_split(config.target, "train", data_root)
    test = load_split(config.target, "test", data_root)
    return ReplayedRun(rid, config, result, train, test, stored if not math.isnan(stored) else 0.0)


def _pinned_record(source: dict[str, Any]):
    """The source as the study pinned it: the same file with the same sha256, or an error."""
    record = resolve_source(source["path"] or source["model"])
    pinned = source.get("sha256")
    if pinned and record.sha256 != pinned:
        raise CheckpointError(f"source checkpoint {record.path or record.name} changed since the "
                              f"study ran (sha256 {str(record.sha256)[:12]}... != {pinned[:12]}...); "
                              "restore it")
    return record


def run_source(study_dir: str | Path, run_id: str) -> tuple[str, RunConfig, Any]:
    """A finished run's full id, config and source model as the study pinned it (not fine-tuned).

    Raises:
        ConfigError: see :func:`find_run`.
        CheckpointError: the source checkpoint is gone or changed since the study ran.
    """
    rid, config, source, _ = find_run(study_dir, run_id)
    return rid, config, load_source(_pinned_record(source))
