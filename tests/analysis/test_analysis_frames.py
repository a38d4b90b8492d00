"""The frame contract: checking input, CSV import, coverage, sources and the baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic_study import make_study

from robust_transfer.analysis import (
    image_factors,
    prepare_epochs,
    prepare_runs,
    read_runs_csv,
    resolve_baseline,
)
from robust_transfer.analysis.frames import display_name, source_table
from robust_transfer.analysis.report import compute
from robust_transfer.analysis.stats import CIOptions
from robust_transfer.errors import ConfigError, RobustTransferError, UnknownNameError


@pytest.fixture(scope="module")
def study() -> tuple[pd.DataFrame, pd.DataFrame]:
    return make_study()


def test_prepare_runs_keeps_finished_runs_and_counts_the_rest(study):
    runs = study[0].copy()
    runs.loc[:9, "status"] = "running"
    runs.loc[10, ["status", "test_acc"]] = ["failed", np.nan]
    prepared, coverage = prepare_runs(runs, total=200)
    assert len(prepared) == len(runs) - 11
    assert (coverage.finished, coverage.excluded, coverage.missing) == (109, 11, 91)
    assert coverage.sentence() == ("109 of 200 runs finished (91 missing); "
                                   "11 unfinished rows ignored")
    assert prepared["unfrozen_blocks"].map(type).eq(str).all()
    assert prepared["n"].dtype == np.int64


def test_nan_accuracy_of_a_finished_run_is_refused_not_dropped(study):
    runs = study[0].copy()
    runs.loc[3, "test_acc"] = np.nan
    with pytest.raises(ConfigError, match="1 finished run.* no test_acc"):
        prepare_runs(runs)
    with pytest.raises(ConfigError, match="1 finished run.* no test_acc"):
        prepare_runs(runs.drop(columns="status"))  # without a status every row is a run


def test_text_in_number_columns_and_duplicate_columns_are_refused(study):
    runs = study[0].copy()
    with pytest.raises(ConfigError, match="column 'test_acc' must hold numbers, found '85%'"):
        prepare_runs(runs.assign(test_acc=runs["test_acc"].astype(object).where(
            runs.index != 5, "85%")))
    with pytest.raises(ConfigError, match="column 'source_eps' must hold numbers"):
        prepare_runs(runs.assign(source_eps="three"))
    doubled = pd.concat([runs, runs[["test_acc"]]], axis=1)
    with pytest.raises(ConfigError, match="duplicate column.*test_acc"):
        prepare_runs(doubled)


def test_minus_one_codes_mean_all(study):
    runs = study[0].copy()
    runs["unfrozen_blocks"] = runs["unfrozen_blocks"].replace({"3": "-1"})
    runs["n_label"] = runs["n_label"].replace({"1600": "-1"})
    prepared = prepare_runs(runs)[0]
    assert set(prepared["unfrozen_blocks"]) == {"0", "all"}
    assert "all" in set(prepared["n_label"]) and "-1" not in set(prepared["n_label"])
    with pytest.raises(ConfigError, match="unfrozen_blocks must be a number of blocks"):
        prepare_runs(runs.assign(unfrozen_blocks="-2"))


def test_missing_run_columns_are_named(study):
    with pytest.raises(ConfigError, match="seed, test_acc"):
        prepare_runs(study[0].drop(columns=["seed", "test_acc"]))


def test_percentages_duplicates_and_two_eps_per_label_are_refused(study):
    runs = study[0]
    with pytest.raises(ConfigError, match="divide percentages by 100"):
        prepare_runs(runs.assign(test_acc=runs["test_acc"] * 100))
    with pytest.raises(ConfigError, match="share a"):
        prepare_runs(pd.concat([runs, runs.iloc[:1]]))
    relabelled = runs.assign(source=runs["source"].replace({"l2-eps3": "l2-eps0.5"}))
    with pytest.raises(ConfigError, match="several eps values"):
        prepare_runs(relabelled)


def test_epochs_frame_keeps_evaluated_epochs_of_analysed_runs(study):
    runs, epochs = study
    finished = prepare_runs(runs.iloc[:60])[0]
    epochs = epochs.copy()
    epochs.loc[epochs["epoch"] == 2, "test_acc"] = np.nan
    kept = prepare_epochs(epochs, finished)
    assert set(kept["run_id"]) == set(finished["run_id"])
    assert 2 not in set(kept["epoch"])
    with pytest.raises(ConfigError, match="epoch"):
        prepare_epochs(epochs.drop(columns="epoch"), finished)


def test_csv_import_gives_the_same_answer_as_the_frames(study, tmp_path):
    runs = study[0]
    columns = ["source", "target", "n", "unfrozen_blocks", "epochs", "seed", "test_acc"]
    path = tmp_path / "other.csv"
    runs[columns].assign(eps=runs["source_eps"], norm=runs["source_norm"]).to_csv(path, index=False)
    imported = prepare_runs(read_runs_csv(path))[0]
    direct = image_factors(prepare_runs(runs)[0], "natural").summary
    from_csv = image_factors(imported, "natural").summary
    assert np.allclose(direct["factor"], from_csv["factor"])
    assert list(source_table(imported, "natural")["name"]) == [
        "natural", "L2 eps 0.5", "L2 eps 3", "Linf eps 4/255"]


def test_csv_without_eps_knows_natural_by_its_label(study, tmp_path):
    path = tmp_path / "plain.csv"
    runs = study[0]
    runs[["source", "target", "n", "unfrozen_blocks", "epochs", "seed", "test_acc"]].to_csv(
        path, index=False)
    assert resolve_baseline(prepare_runs(read_runs_csv(path))[0]) == "natural"


def test_csv_missing_columns_and_missing_file(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"source": ["a"], "target": ["digits"], "n": [100], "test_acc": [0.5]}).to_csv(
        path, index=False)
    with pytest.raises(ConfigError, match="missing column.*unfrozen_blocks, epochs, seed"):
        read_runs_csv(path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_runs_csv(tmp_path / "nope.csv")


def test_baseline_resolution(study):
    runs = prepare_runs(study[0])[0]
    assert resolve_baseline(runs) == "natural"
    assert resolve_baseline(runs, "l2-eps0.5") == "l2-eps0.5"
    with pytest.raises(UnknownNameError, match="sources: l2-eps0.5, l2-eps3"):
        resolve_baseline(runs, "imagenet")
    robust_only = runs[runs["source"] != "natural"]
    with pytest.raises(RobustTransferError, match="baseline=LABEL .*--baseline LABEL"):
        resolve_baseline(robust_only)
    renamed = runs.assign(source=runs["source"].replace({"natural": "standard"}))
    assert resolve_baseline(renamed) == "standard"  # eps 0 is enough


def test_analysis_without_baseline_names_the_labels(study):
    robust_only = study[0][study[0]["source"] != "natural"]
    with pytest.raises(RobustTransferError, match="among l2-eps0.5, l2-eps3, linf-eps4"):
        compute(robust_only, None, None, CIOptions())


def test_empty_study_says_how_much_is_missing(study):
    runs = study[0].assign(status="queued")
    with pytest.raises(RobustTransferError, match=r"no finished runs .*0 of 500 runs finished"):
        compute(runs, None, None, CIOptions(), total_runs=500)


@pytest.mark.parametrize(("label", "eps", "norm", "name"), [
    ("natural", 0.0, "none", "natural"), ("x", 0.5, "l2", "L2 eps 0.5"),
    ("x", 3.0, "l2", "L2 eps 3"), ("x", 8 / 255, "linf", "Linf eps 8/255"),
    ("x", 0.03, "linf", "Linf eps 0.03"), ("mine", float("nan"), "unknown", "mine")])
def test_display_names(label, eps, norm, name):
    assert display_name(label, eps, norm) == name
