"""Data-efficiency factors and the sentences about them, on curves with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic_study import SyntheticSource, SyntheticStudy, make_study

from robust_transfer.analysis import (
    CIOptions,
    analyze,
    epoch_factors,
    image_factors,
    prepare_runs,
)
from robust_transfer.analysis.efficiency import crossing_points
from robust_transfer.analysis.report import compute
from robust_transfer.analysis.stats import epoch_curves

NS = (100, 200, 400, 800, 1600)


def _study(image: float = 3.0, epoch: float = 1.0, seeds=(0, 1, 2, 3), run_noise: float = 0.0,
           seed_noise: float = 0.02, **kw) -> tuple[pd.DataFrame, pd.DataFrame]:
    sources = {"natural": SyntheticSource(), "l2-eps3": SyntheticSource(3.0, "l2", image, epoch)}
    return make_study(SyntheticStudy(sources=sources, seeds=tuple(seeds), ns=NS,
                                     run_noise=run_noise, seed_noise=seed_noise, **kw))


def test_crossing_points_interpolates_and_flags_the_ends():
    x = np.log([100.0, 200.0, 400.0])
    y = np.array([0.5, 0.6, 0.7])
    cross, status = crossing_points(x, y, np.array([0.55, 0.7, 0.45, 0.8, 0.5]))
    assert np.exp(cross[0]) == pytest.approx(np.sqrt(100 * 200))  # halfway on log n
    assert np.exp(cross[1]) == pytest.approx(400)
    assert list(status) == ["ok", "ok", "censored", "not reached", "ok"]
    assert np.isnan(cross[3]) and np.exp(cross[2]) == pytest.approx(100)


def test_crossing_points_takes_the_first_crossing_of_a_bumpy_curve():
    x = np.log([1.0, 2.0, 3.0, 4.0])
    cross, status = crossing_points(x, np.array([0.2, 0.6, 0.4, 0.8]), np.array([0.5]))
    assert status[0] == "ok" and np.exp(cross[0]) < 2


def test_shift_by_log2_3_recovers_factor_3_exactly():
    runs, _ = _study(image=3.0)  # robust curve = natural curve shifted by log2(3) in log2 n
    factors = image_factors(prepare_runs(runs)[0], "natural")
    by_n = factors.by_x.set_index(["unfrozen_blocks", "n"])
    for unfrozen in ("0", "3"):
        ok = by_n.loc[unfrozen].query("status == 'ok'")
        assert list(ok.index) == [400, 800, 1600]
        assert np.allclose(ok["factor"], 3.0) and np.allclose(ok[["lo", "hi"]], 3.0)
        censored = by_n.loc[unfrozen].query("status == 'censored'")
        assert list(censored.index) == [100, 200]  # robust at n=100 already beats these
        assert np.allclose(censored["factor"], [1.0, 2.0])  # lower bounds n / 100
    summary = factors.summary
    assert np.allclose(summary["factor"], 3.0) and set(summary["verdict"]) == {"fewer"}
    assert set(summary["x_min"]) == {400} and set(summary["x_max"]) == {1600}


def test_noisy_seeds_give_an_interval_around_3():
    runs, _ = _study(image=3.0, run_noise=0.01, seeds=range(6))
    summary = image_factors(prepare_runs(runs)[0], "natural", CIOptions()).summary
    assert ((summary["lo"] < 3) & (summary["hi"] > 3)).all()
    assert (summary["lo"] > 1.5).all() and (summary["hi"] < 6).all()
    assert (summary["n_seeds"] == 6).all()


def test_epoch_factor_2_recovered_from_per_epoch_curves():
    runs, epochs = _study(image=1.0, epoch=2.0, budgets=(8,))
    runs = prepare_runs(runs)[0]
    factors = epoch_factors(epoch_curves(runs, epochs), "natural")
    by_e = factors.by_x
    assert set(by_e.loc[by_e["epoch"] == 1, "status"]) == {"censored"}
    ok = by_e[by_e["status"] == "ok"]
    assert set(ok["epoch"]) >= {3, 4, 5, 6, 7, 8}
    assert np.allclose(ok["factor"], 2.0)
    assert np.allclose(factors.summary["factor"], 2.0)
    assert set(factors.summary["verdict"]) == {"fewer"}


def test_epoch_curves_fall_back_to_final_accuracy_per_budget():
    runs, _ = _study(image=1.0, epoch=2.0, budgets=(2, 4, 8))
    curves = epoch_curves(prepare_runs(runs)[0], pd.DataFrame())
    assert set(curves["budget"]) == {"by budget"}
    assert sorted(curves["epoch"].unique()) == [2, 4, 8]


def _headlines(runs: pd.DataFrame, epochs: pd.DataFrame | None = None) -> list[str]:
    return compute(runs, epochs, None, CIOptions()).headlines


def test_headline_states_factor_and_interval():
    runs, epochs = _study(image=3.0, run_noise=0.01, seeds=range(6))
    lines = _headlines(runs, epochs)
    image_line = next(line for line in lines if "images" in line.split("(")[0])
    assert image_line.startswith("L2 eps 3 reaches the natural source's accuracy on digits with ")
    factor = float(image_line.split(" with ")[1].split("x fewer")[0])
    assert 2.5 < factor < 3.5
    assert "95% CI" in image_line and "head only, 8 epochs" in image_line


def test_one_seed_is_said_in_words():
    runs, _ = _study(image=3.0, seeds=(0,))
    line = _headlines(runs)[0]
    assert "only one seed" in line and "CI" not in line


def test_interval_including_1_is_no_clear_difference():
    runs, _ = _study(image=1.0, run_noise=0.02, seed_noise=0.0, seeds=range(4))
    line = _headlines(runs)[0]
    assert "no clear difference" in line and "includes 1" in line


def test_worse_source_needs_more_images_and_says_where_it_never_catches_up():
    runs, _ = _study(image=0.25)
    line = _headlines(runs)[0]
    assert "needs 4.0x more images" in line
    assert "At 2 of 5 n values it does not reach" in line  # n=800, 1600 would need 3200+


def test_never_reaching_is_said_in_words():
    runs, _ = _study(image=0.01)
    assert "never reaches the natural source's accuracy on digits" in _headlines(runs)[0]


def test_censored_everywhere_gives_a_lower_bound_only():
    runs, _ = _study(image=100.0)
    line = _headlines(runs)[0]
    assert "at least 16x fewer images" in line and "would need runs with smaller n" in line


def test_target_without_baseline_runs_is_said_in_words():
    runs, _ = _study(image=3.0, targets=("digits", "fashion-mnist"))
    runs = runs[~((runs["target"] == "fashion-mnist") & (runs["source"] == "natural"))]
    lines = _headlines(runs)
    assert any("on fashion-mnist: no runs of the natural source on this target to compare with"
               in line for line in lines)
    robust_missing = runs[~((runs["target"] == "digits") & (runs["source"] == "l2-eps3"))]
    assert any("L2 eps 3 on digits: no runs of this source on this target" in line
               for line in _headlines(robust_missing))


def test_censored_at_the_smallest_n_only_says_no_factor_instead_of_at_least_1x():
    runs, _ = _study(image=3.0)
    # the natural source only at n = 100, which the robust one already beats at n = 100:
    # the bound n / n_min is 1, which says nothing
    runs = runs[(runs["n"] <= 200) & ~((runs["source"] == "natural") & (runs["n"] == 200))]
    lines = _headlines(runs)
    assert not any("at least 1.0x" in line or "nanx" in line for line in lines)
    assert "so no factor can be measured" in lines[0]


def test_one_n_with_seeds_on_both_sides_of_the_goal_is_mixed_not_a_crash(tmp_path):
    """Issue 22 item 3: two sources, one n, one epoch, two seeds; the robust source beats
    the baseline with one seed and not with the other, so no factor exists at any point.
    The summary said "ok" with no seeds and the headline crashed on its NaN n-range."""
    accs = {"natural": (0.234, 0.145), "l2-eps1": (0.120, 0.169)}
    runs = pd.DataFrame([
        {"run_id": f"{src}-{seed}", "source": src, "source_eps": 0.0 if src == "natural" else 1.0,
         "source_norm": "none" if src == "natural" else "l2", "target": "digits", "n": 30,
         "n_label": "30", "unfrozen_blocks": "0", "epochs": 1, "seed": seed, "test_acc": acc}
        for src, values in accs.items() for seed, acc in enumerate(values)])
    epochs = runs[["run_id", "test_acc"]].assign(epoch=1)
    res = analyze(runs, epochs, tmp_path / "report", figures=False)
    row = res.image_factors.summary.iloc[0]
    assert row["verdict"] == "mixed" and row["n_seeds"] == 0
    line = next(h for h in res.headlines if h.startswith("L2 eps 1"))
    assert "no factor can be measured (some seeds are above the goal" in line
    assert "some seeds are above" in res.markdown_path.read_text()
