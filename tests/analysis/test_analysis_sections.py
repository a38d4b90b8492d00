"""The report's "Robustness after transfer" and "Tuned on validation" sections, from a real store."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from synthetic_study import DEFAULT_SOURCES, SyntheticStudy, make_study

from robust_transfer.analysis import analyze, analyze_study
from robust_transfer.analysis.tuning import choose_lr
from robust_transfer.errors import ConfigError
from robust_transfer.study.store import RECIPE_COLUMNS, RunOutcome, StudyStore, load_results

RATES = (0.01, 0.1)
STUDY = SyntheticStudy(sources={k: DEFAULT_SOURCES[k] for k in ("natural", "l2-eps3")},
                       ns=(100, 400), unfrozen=("0", "1"), budgets=(4,), seeds=(0, 1, 2))
RECIPE = {"momentum": 0.9, "weight_decay": 5e-4, "schedule": "step", "batch_size": 32,
          "augment": "[]", "resolution": 16, "head_init": "normal", "eval_every": 1,
          "val_images": 300, "robust_eps": 0.25, "robust_norm": "l2", "robust_images": 200}


def _values(row: dict, lr: float) -> tuple[float, float, float]:
    """(test, val, robust) of one run: the natural source does better at lr 0.01 and the
    robust one at 0.1, on validation as on test; robust accuracy about 0.2 vs 0.6."""
    natural = row["source"] == "natural"
    better = (lr == 0.01) == natural
    test = float(np.clip(row["test_acc"] - (0 if better else 0.04), 0, 1))
    val = test + 0.01 * row["seed"]
    seed = row["seed"]
    robust = (0.2 + 0.02 * seed if natural else 0.6 + 0.03 * seed + 0.01 * (seed == 1)) \
        + (0.05 if row["n"] == 400 else 0)  # robust minus natural: 0.40, 0.42, 0.42 by seed
    return test, val, robust


def _fill(study_dir, drop_robust: set[str] = frozenset()) -> None:
    runs, epochs = make_study(STUDY)
    curves = {rid: part.to_dict("records") for rid, part in epochs.groupby("run_id")}
    rows, outcomes = [], []
    for r in runs.to_dict("records"):
        for lr in RATES:
            recipe = {**RECIPE, "lr": lr}
            config = {"source": r["source"], "target": r["target"], "n": r["n_label"],
                      "unfrozen_blocks": r["unfrozen_blocks"], "epochs": r["epochs"],
                      "seed": r["seed"], "recipe": recipe}
            run_id = f"{r['run_id']}-lr{lr}"
            rows.append({**r, "run_id": run_id, "config": json.dumps(config),
                         **{k: recipe.get(k) for k in RECIPE_COLUMNS}})
            test, val, robust = _values(r, lr)
            history = [dict(h) for h in curves[r["run_id"]]]
            history[-1].update(test_acc=test, val_acc=val,
                               robust_acc=None if run_id in drop_robust else robust)
            outcomes.append(RunOutcome(run_id=run_id, status="finished", started_at=0.0,
                                       finished_at=1.0, n=r["n"], history=tuple(history)))
    with StudyStore(study_dir, create=True) as store:
        store.plan(rows, store.add_spec("all", len(rows), "sections", "name: sections\n"))
        for outcome in outcomes:
            store.record(outcome)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = tmp_path_factory.mktemp("sections")
    _fill(path)
    return path, analyze_study(path)


def test_both_sections_appear_with_the_attack_and_the_rule(study):
    path, result = study
    md = result.markdown_path.read_text()
    html = result.html_path.read_text()
    for text in (md, html):
        assert "Robustness after transfer" in text and "Tuned on validation" in text
        assert "L2 PGD-20 at eps 0.25" in text and "200 class-balanced test images" in text
        assert "chosen on validation accuracy, never on test accuracy" in text
        assert "300 training images held out" in text
    assert md.index("## Robustness after transfer") < md.index("## Tuned on validation") \
        < md.index("## Accuracy")
    assert "![robust_digits](figures/robust_digits.png)" in md
    assert (path / "analysis" / "figures" / "robust_digits.png").stat().st_size > 1000


def test_rest_of_the_report_uses_the_shared_rate(study):
    _, result = study
    assert set(result.runs["lr"]) == {0.1} and len(result.runs) == 24
    assert result.coverage.finished == 48
    note = next(s for s in result.notes if s.startswith("Runs were trained at 2 learning rates"))
    assert "shared rate 0.1" in note and "24 of 48 runs" in note
    assert "lr" not in result.recipe  # one rate in the main analysis: no mixed-recipe caution


def test_chosen_rates_are_choose_lr_on_validation(study):
    path, result = study
    runs, _ = load_results(path)
    expected = choose_lr(runs).set_index(["source", "target", "n", "unfrozen_blocks"])["lr"]
    got = result.tuning.chosen.set_index(["source", "target", "n", "unfrozen_blocks"])["lr"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    assert set(got.xs("natural")) == {0.01} and set(got.xs("l2-eps3")) == {0.1}  # the design
    # the compact table: one column per source, rows per cell, "rate (val acc)"
    md = result.markdown_path.read_text()
    assert "| target | n | unfrozen | natural | L2 eps 3 |" in md
    assert re.search(r"\| digits \| 400 \| head only \| 0\.01 \(\d+\.\d%\) \| 0\.1 \(\d+\.\d%\) \|", md)


def test_tuned_deltas_beside_shared_ones(study):
    _, result = study
    d = result.tuning.deltas.set_index(["n", "unfrozen_blocks"])
    assert set(d["lr"]) == {0.1} and set(d["baseline_lr"]) == {0.01} and set(d["shared_lr"]) == {0.1}
    # at the shared rate 0.1 the natural source lost 0.04 (its worse rate); tuned, it did not
    assert np.allclose(d["shared_delta"] - d["tuned_delta"], 0.04)
    assert len(result.tuning.sentences) == 4
    assert all(s.startswith("l2-eps3 vs natural on digits") for s in result.tuning.sentences)
    md = result.markdown_path.read_text()
    assert all(f"- {s}" in md for s in result.tuning.sentences)
    assert "| shared lr 0.1 | tuned | tuned lr (source vs base) |" in md


def test_gap_sentence_equals_the_table(study):
    _, result = study
    section = result.robustness
    assert section.attacks == ["L2 PGD-20 at eps 0.25 (step 2.5 eps/20) on 200 class-balanced "
                               "test images"]
    (sentence,) = section.sentences
    assert sentence.startswith("digits, n=400 (the largest n)")
    t = section.table.set_index(["source", "n", "unfrozen_blocks"])
    for unfrozen, text in (("0", "head only"), ("1", "last block")):
        gap = t.loc[("l2-eps3", 400, unfrozen), "robust"] - t.loc[("natural", 400, unfrozen),
                                                                  "robust"]
        assert gap == pytest.approx(0.4 + 0.04 / 3)  # by construction
        g = section.gaps.set_index(["source", "n", "unfrozen_blocks"]).loc[("l2-eps3", 400,
                                                                            unfrozen)]
        assert g["lo"] < gap < g["hi"] and g["hi"] - g["lo"] > 0.01
        assert f"{text}: L2 eps 3 {100 * gap:+.1f} points [{100 * g['lo']:+.1f}, " \
               f"{100 * g['hi']:+.1f}]" in sentence
    assert set(section.table["seeds"]) == {3} and set(section.table["lr"]) == {0.1}
    assert f"**{sentence}**" in result.markdown_path.read_text()


def test_sections_are_exported_as_csv(study):
    path, result = study
    tables = path / "analysis" / "tables"
    for stem in ("robustness", "robustness_gaps", "tuning_chosen_lr", "tuning_deltas"):
        assert (tables / f"{stem}.csv").is_file()
    robust = pd.read_csv(tables / "robustness.csv")
    assert np.allclose(robust["robust"], result.robustness.table["robust"])
    chosen = pd.read_csv(tables / "tuning_chosen_lr.csv")
    assert list(chosen["lr"]) == list(result.tuning.chosen["lr"])


def test_partial_robust_accuracy_uses_the_measured_runs(tmp_path):
    # one natural seed of one cell lacks robust accuracy: its cell has 2 seeds, its gap 2 pairs
    missing = "natural-digits-n400-u0-e4-s2-lr0.1"
    _fill(tmp_path, drop_robust={missing})
    result = analyze_study(tmp_path, figures=False)
    section = result.robustness
    assert section.notes == ["Robust accuracy was measured in 23 of 24 runs; this section uses "
                             "those runs only, clean accuracy included."]
    t = section.table.set_index(["source", "n", "unfrozen_blocks"])
    assert t.loc[("natural", 400, "0"), "seeds"] == 2 and t.loc[("l2-eps3", 400, "0"), "seeds"] == 3
    g = section.gaps.set_index(["source", "n", "unfrozen_blocks"])
    assert g.loc[("l2-eps3", 400, "0"), "n_seeds"] == 2
    assert "measured in 23 of 24 runs" in result.markdown_path.read_text()


def test_percent_robust_accuracy_is_one_clear_error():
    runs, epochs = make_study(STUDY)
    runs["robust_acc"] = 60.0
    with pytest.raises(ConfigError, match="robust_acc must be a fraction in \\[0, 1\\], found 60"):
        analyze(runs, epochs)


def test_without_the_columns_there_are_no_such_sections(tmp_path):
    runs, epochs = make_study(STUDY)
    result = analyze(runs, epochs, tmp_path / "plain", figures=False)
    assert result.robustness is None and result.tuning is None
    for text in (result.markdown_path.read_text(), result.html_path.read_text()):
        assert "Robustness after transfer" not in text and "Tuned on validation" not in text
    assert not list((tmp_path / "plain" / "tables").glob("robust*"))
    assert not list((tmp_path / "plain" / "tables").glob("tuning*"))
    # the store gives the columns as all-NaN when no run measured them: still no sections
    both = analyze(runs.assign(robust_acc=np.nan, val_acc=np.nan), epochs)
    assert both.robustness is None and both.tuning is None


def test_one_rate_with_validation_says_there_was_nothing_to_choose():
    runs, epochs = make_study(STUDY)
    result = analyze(runs.assign(val_acc=runs["test_acc"]), epochs)
    assert result.tuning.chosen.empty and result.tuning.sentences == []
    assert result.tuning.notes == ["Every run used lr 0.1, so there was no rate to choose."]


def test_evaluation_defaults_match_the_engine():
    from robust_transfer.engine.transfer import Recipe
    from robust_transfer.study.results import EVALUATION_DEFAULTS

    recipe = Recipe()
    assert {k: getattr(recipe, k) for k in EVALUATION_DEFAULTS} == EVALUATION_DEFAULTS


def test_several_rates_without_validation_use_the_largest():
    runs, epochs = make_study(STUDY)
    slow = runs.assign(lr=0.01, run_id=runs["run_id"] + "-slow", test_acc=runs["test_acc"] - 0.1)
    result = analyze(pd.concat([runs, slow], ignore_index=True), epochs)
    assert set(result.runs["lr"]) == {0.1} and result.tuning is None
    assert np.allclose(result.runs.sort_values("run_id")["test_acc"],
                       runs.sort_values("run_id")["test_acc"])
    assert any("the others are not used (no validation accuracy" in s for s in result.notes)


def test_analyze_command_prints_the_sections_sentences(study, tmp_path, capsys):
    from robust_transfer.cli import main

    path, result = study
    assert main(["analyze", str(path), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "robustness after transfer:" in out and "tuned on validation:" in out
    for sentence in (*result.robustness.sentences, *result.tuning.sentences):
        assert f"- {sentence}" in out


def test_the_tuning_section_takes_the_interval_options(study):
    from robust_transfer.analysis import CIOptions
    from robust_transfer.analysis.frames import load_study
    from robust_transfer.analysis.sections import build_document
    from robust_transfer.analysis.sections.tuning import lines

    path, wide = study
    data = load_study(path)
    narrow = analyze(data.runs, data.epochs, options=CIOptions(level=0.8))
    a, b = wide.tuning.deltas, narrow.tuning.deltas
    assert np.allclose(a["tuned_delta"], b["tuned_delta"])  # same means, narrower intervals
    assert (b["tuned_hi"] - b["tuned_lo"] < a["tuned_hi"] - a["tuned_lo"]).all()
    assert "80% t-interval over seeds" in lines(narrow)[1]
    tuning = next(s for s in build_document(narrow, "t").sections
                  if s.heading == "Tuned on validation")
    assert tuning.blocks[-2].title.endswith("[80% t-interval]")
