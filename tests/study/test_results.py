"""The analysis' one reader of a study directory: typed runs, epochs, sources' metadata."""

from __future__ import annotations

import json
import math

import pytest

from robust_transfer.analysis.frames import load_study
from robust_transfer.errors import ConfigError
from robust_transfer.models.metadata import read_metadata
from robust_transfer.models.zoo import EMBEDDED_DIR
from robust_transfer.study.results import read_study
from robust_transfer.study.store import RunOutcome, StudyStore, run_row

SOURCES = {"natural": ("fmnist-natural", 0.0, "none"), "l2-eps1": ("fmnist-l2-eps1", 1.0, "l2")}


def _store(path, missing_checkpoint: bool = False) -> None:
    rows, outcomes, pins = [], [], []
    for label, (model, eps, norm) in SOURCES.items():
        ckpt = str(EMBEDDED_DIR / f"{model}.safetensors")
        if missing_checkpoint and label == "l2-eps1":
            ckpt = str(path / "gone.safetensors")
        pins.append({"label": label, "model": model, "path": ckpt, "sha256": "x" * 64,
                     "arch": "small_resnet", "n_blocks": 3, "eps": eps, "norm": norm})
        for seed in (0, 1):
            recipe = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step",
                      "batch_size": 32, "augment": "auto", "resolution": None,
                      "head_init": "normal", "eval_every": 1, "robust_eps": 0.5}
            config = {"source": label, "target": "digits", "n": 30, "unfrozen_blocks": 0,
                      "epochs": 1, "seed": seed, "recipe": recipe}
            row = run_row(config, {"eps": eps, "norm": norm})
            rows.append(row)
            outcomes.append(RunOutcome(run_id=row["run_id"], status="finished", started_at=0.0,
                                       finished_at=1.0, n=30, history=(
                                           {"epoch": 1, "test_acc": 0.5 + seed / 10,
                                            "robust_acc": 0.25},)))
    with StudyStore(path, create=True) as db:
        db.pin_sources(pins)
        db.plan(rows, db.add_spec("all", len(rows), "tiny", "name: tiny\n"))
        for outcome in outcomes:
            db.record(outcome)


def test_read_study_gives_typed_runs_epochs_and_checked_source_metadata(tmp_path):
    _store(tmp_path)
    study = read_study(tmp_path)
    runs = study.runs
    assert len(runs) == 4 and study.total_runs == 4 and study.spec_text == "name: tiny\n"
    assert runs["n"].dtype == "int64" and runs["test_acc"].dtype == "float64"
    assert runs["unfrozen_blocks"].tolist() == ["0"] * 4  # text labels, as the contract says
    # the evaluation recipe comes from the stored configs: set where given, defaults elsewhere
    assert set(runs["robust_eps"]) == {0.5} and set(runs["robust_steps"]) == {20}
    assert sorted(study.epochs["test_acc"]) == [0.5, 0.5, 0.6, 0.6]
    info = study.source_info.set_index("source")
    meta = read_metadata(EMBEDDED_DIR / "fmnist-l2-eps1.safetensors")
    assert info.loc["l2-eps1", "clean_acc"] == meta["clean_acc"]
    assert info.loc["l2-eps1", "robust_eval"] == meta["robust_eval"]
    # the analysis' view names the attack in words
    shown = load_study(tmp_path).source_info.set_index("source")
    assert shown.loc["l2-eps1", "robust_eval"] == "PGD-20 L2 1"
    assert json.loads(json.dumps(list(shown["robust_eval"])))  # plain text, not dicts


def test_a_checkpoint_that_is_gone_leaves_its_accuracies_unknown(tmp_path):
    _store(tmp_path, missing_checkpoint=True)
    info = read_study(tmp_path).source_info.set_index("source")
    assert math.isnan(info.loc["l2-eps1", "clean_acc"]) and info.loc["l2-eps1", "eps"] == 1.0
    assert not math.isnan(info.loc["natural", "clean_acc"])


def test_read_study_refuses_a_folder_that_is_not_there(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_study(tmp_path / "nothing")
