"""Intervals across seeds and paired differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from synthetic_study import SyntheticSource, SyntheticStudy, make_study

from robust_transfer.analysis import (
    CIOptions,
    ci_table,
    paired_deltas,
    prepare_runs,
    summarize_deltas,
    summarize_runs,
)
from robust_transfer.errors import ConfigError, UnknownNameError


def _groups(values_by_group: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"g": g, "v": v} for g, vs in values_by_group.items() for v in vs])


def test_t_interval_matches_scipy():
    values = [0.61, 0.64, 0.58, 0.66, 0.60]
    table = ci_table(_groups({"a": values}), ["g"], "v")
    lo, hi = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    row = table.iloc[0]
    assert row["n_seeds"] == 5
    assert row["mean"] == pytest.approx(np.mean(values))
    assert (row["lo"], row["hi"]) == pytest.approx((lo, hi))


def test_level_changes_width_and_single_seed_has_no_interval():
    frame = _groups({"a": [0.1, 0.2, 0.4], "b": [0.5]})
    narrow = ci_table(frame, ["g"], "v", CIOptions(level=0.8)).set_index("g")
    wide = ci_table(frame, ["g"], "v", CIOptions(level=0.99)).set_index("g")
    assert wide.loc["a", "hi"] - wide.loc["a", "lo"] > narrow.loc["a", "hi"] - narrow.loc["a", "lo"]
    assert np.isnan(wide.loc["b", "lo"]) and np.isnan(wide.loc["b", "hi"])
    assert wide.loc["b", "mean"] == 0.5


def test_nan_values_are_ignored():
    table = ci_table(_groups({"a": [0.2, np.nan, 0.4]}), ["g"], "v")
    assert table.iloc[0]["n_seeds"] == 2
    assert table.iloc[0]["mean"] == pytest.approx(0.3)


def test_bootstrap_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(3)
    values = rng.normal(0.7, 0.03, size=8)
    frame = _groups({"a": list(values), "b": list(values + 0.1)})
    options = CIOptions(method="bootstrap", n_boot=4000, seed=1)
    table = ci_table(frame, ["g"], "v", options).set_index("g")
    ref = sps.bootstrap((values,), np.mean, n_resamples=20000, method="percentile",
                        random_state=0).confidence_interval
    sd = values.std()
    assert table.loc["a", "lo"] == pytest.approx(ref.low, abs=0.15 * sd)
    assert table.loc["a", "hi"] == pytest.approx(ref.high, abs=0.15 * sd)
    assert table.loc["b", "lo"] == pytest.approx(table.loc["a", "lo"] + 0.1, abs=0.15 * sd)
    again = ci_table(frame, ["g"], "v", options).set_index("g")
    assert again.equals(table)  # seeded: reports are reproducible


def test_unknown_method_and_bad_level_are_refused():
    with pytest.raises(UnknownNameError, match="bootstrap"):
        CIOptions(method="jackknife")
    with pytest.raises(ConfigError, match="level"):
        CIOptions(level=95)


def _two_sources(run_noise: float, seed_noise: float, shift: float = 1.0) -> pd.DataFrame:
    study = SyntheticStudy(sources={"natural": SyntheticSource(),
                                    "l2-eps3": SyntheticSource(3.0, "l2", shift)},
                           seeds=tuple(range(5)), run_noise=run_noise, seed_noise=seed_noise)
    runs, _ = make_study(study)
    return prepare_runs(runs)[0]


def test_pairing_by_seed_cancels_shared_noise():
    # robust = natural + 0.07 * log2(2) in every seed; the seeds differ a lot (shared noise)
    runs = _two_sources(run_noise=0.0, seed_noise=0.05, shift=2.0)
    deltas = paired_deltas(runs, "natural")
    assert len(deltas) == len(runs) // 2
    table = summarize_deltas(deltas)
    assert np.allclose(table["mean"], 0.07)
    assert np.allclose(table["hi"] - table["lo"], 0, atol=1e-9)
    assert set(table["verdict"]) == {"better"}
    acc = summarize_runs(runs)
    assert (acc["hi"] - acc["lo"]).min() > 0.05  # unpaired intervals would be wide


def test_deltas_of_equal_sources_are_not_called_better():
    table = summarize_deltas(paired_deltas(_two_sources(run_noise=0.02, seed_noise=0.0), "natural"))
    # same source twice: the 95% intervals should cover 0 (here: all 10 cells do)
    assert ((table["lo"] < 0) & (table["hi"] > 0)).all()
    assert set(table["verdict"]) == {"no clear difference"}


def test_runs_without_a_partner_are_not_paired():
    runs = _two_sources(run_noise=0.01, seed_noise=0.01)
    drop = (runs["source"] == "natural") & (runs["seed"] == 0)
    deltas = paired_deltas(runs[~drop], "natural")
    assert 0 not in set(deltas["seed"])
    assert len(deltas) == 4 * len(runs) // 10
