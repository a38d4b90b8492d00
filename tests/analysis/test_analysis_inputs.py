"""Other people's results: CSVs, the codes real logs use, epoch budgets, and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic_study import SyntheticStudy, make_study

from robust_transfer.analysis import CIOptions, analyze, analyze_csv, read_runs_csv
from robust_transfer.analysis import report as report_module
from robust_transfer.analysis.report import compute
from robust_transfer.cli import main
from robust_transfer.errors import ConfigError

RUN_COLS = ["run_id", "source", "target", "n", "unfrozen_blocks", "epochs", "seed", "test_acc"]


def _paper_like() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Budgets that shrink with n, as in the paper's logs (16 epochs small n, 8 large)."""
    runs_a, ep_a = make_study(SyntheticStudy(ns=(100, 200), budgets=(16,)))
    runs_b, ep_b = make_study(SyntheticStudy(ns=(400, 800), budgets=(8,)))
    return pd.concat([runs_a, runs_b], ignore_index=True), pd.concat([ep_a, ep_b],
                                                                     ignore_index=True)


def _write(tmp_path, runs: pd.DataFrame, epochs: pd.DataFrame | None = None,
           cols: list[str] = RUN_COLS) -> tuple[str, str | None]:
    runs_path = tmp_path / "runs.csv"
    runs[cols].assign(eps=runs["source_eps"], norm=runs["source_norm"]).to_csv(runs_path,
                                                                              index=False)
    if epochs is None:
        return str(runs_path), None
    epochs_path = tmp_path / "epochs.csv"
    epochs[["run_id", "epoch", "test_acc"]].to_csv(epochs_path, index=False)
    return str(runs_path), str(epochs_path)


def test_budgets_that_differ_with_n_are_pooled_so_tables_span_every_n():
    runs, epochs = _paper_like()
    res = compute(runs, epochs, None, CIOptions())
    assert set(res.tables["accuracy"]) == {("0", "0"), ("3", "0")}
    acc = res.tables["accuracy"][("0", "0")]
    assert list(acc["n"]) == ["100", "200", "400", "800"]
    assert any("16 epochs for n = 100-200, 8 epochs for n = 400-800" in s for s in res.notes)
    assert "final epoch" in res.notes[0]
    assert "each run's own epoch budget" in res.sentences[0]
    assert not res.image_factors.summary.empty


def test_best_epoch_policy_is_flagged_optimistic_and_needs_epochs():
    runs, epochs = make_study()
    res = compute(runs, epochs, None, CIOptions(), epoch_policy="best")
    assert "optimistic" in res.notes[0]
    best = epochs.groupby("run_id")["test_acc"].max()
    assert np.allclose(res.runs.set_index("run_id")["test_acc"], best.loc[res.runs["run_id"]])
    with pytest.raises(ConfigError, match="needs per-epoch rows"):
        compute(runs, None, None, CIOptions(), epoch_policy="best")


def test_cli_runs_and_epochs_csv(tmp_path, capsys):
    runs, epochs = _paper_like()
    runs_csv, epochs_csv = _write(tmp_path, runs, epochs)
    out = tmp_path / "rep"
    assert main(["analyze", "--csv", runs_csv, "--epochs-csv", epochs_csv, "--out", str(out),
                 "--no-figures", "--n", "200", "--unfrozen", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("few images: ") and printed[2].startswith("few epochs: ")
    assert "n = 200, 16-epoch runs" in printed[2]
    for stem in ("accuracy", "delta", "verdict", "epoch_delta", "image_factors"):
        assert (out / "tables" / f"{stem}.csv").is_file()
        assert (out / "tables" / f"{stem}.parquet").is_file()
    verdict = pd.read_csv(out / "tables" / "verdict.csv")
    assert len(verdict) == 3 * 4 * 2  # robust sources x n x unfrozen settings


def test_per_epoch_rows_passed_as_runs_are_refused(tmp_path, capsys):
    runs, epochs = make_study()
    rows = epochs.merge(runs.drop(columns=["test_acc"]), on="run_id")
    path = tmp_path / "per_epoch.csv"
    rows[[*RUN_COLS, "epoch"]].to_csv(path, index=False)
    assert main(["analyze", "--csv", str(path)]) == 2
    err = capsys.readouterr().err
    assert "per-epoch rows; pass them with --epochs-csv" in err and err.count("\n") == 1
    assert not (tmp_path / "per_epoch-analysis").exists()


def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    runs, epochs = make_study()
    runs_csv, epochs_csv = _write(tmp_path, runs, epochs)
    stranger = tmp_path / "stranger.csv"
    epochs.assign(run_id="other-" + epochs["run_id"])[["run_id", "epoch", "test_acc"]].to_csv(
        stranger, index=False)
    no_ids = tmp_path / "no_ids.csv"
    runs[RUN_COLS[1:]].to_csv(no_ids, index=False)
    dup = tmp_path / "dup.csv"
    dup.write_text("source,target,n,unfrozen_blocks,epochs,seed,test_acc,test_acc\n"
                   "natural,digits,100,0,8,0,0.5,0.6\n")
    text = tmp_path / "text.csv"
    runs[RUN_COLS].assign(test_acc=runs["test_acc"].map(lambda a: f"{100 * a:.0f}%")).to_csv(
        text, index=False)
    nan = tmp_path / "nan.csv"
    runs[RUN_COLS].assign(test_acc=runs["test_acc"].where(runs.index != 7)).to_csv(
        nan, index=False)
    out = tmp_path / "out"
    cases = [
        (["--csv", runs_csv, "--epochs-csv", str(stranger)], "run_id(s) of stranger.csv are not"),
        (["--csv", str(no_ids), "--epochs-csv", epochs_csv], "has no run_id column"),
        (["--csv", runs_csv, "--n", "300"], "--n 300: no run has n 300; present: 100, 200"),
        (["--csv", runs_csv, "--unfrozen", "9"], "--unfrozen 9: no run has unfrozen blocks 9"),
        (["--csv", runs_csv, "--epochs", "3"], "--epochs 3: no run has epoch budget 3"),
        (["--csv", str(dup)], "duplicate column(s) test_acc"),
        (["--csv", str(text)], "column 'test_acc' must hold numbers, found '"),
        (["--csv", str(nan)], "1 finished run(s) have no test_acc"),
        (["--csv", runs_csv, "--n-all", "digits"], "expected TARGET=SIZE"),
    ]
    for argv, message in cases:
        assert main(["analyze", *argv, "--out", str(out), "--no-figures"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
        assert not out.exists(), argv
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failing_report_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    runs, epochs = make_study()
    out = tmp_path / "rep"
    analyze(runs, epochs, out, figures=False)
    before = (out / "report.md").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_module, "to_markdown_document", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        analyze(runs.assign(test_acc=runs["test_acc"] * 0.5), epochs, out, figures=False)
    assert (out / "report.md").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # no temp folder left


def test_codes_real_logs_use_are_read_with_their_meaning(tmp_path):
    runs, _ = make_study(SyntheticStudy(ns=(100, 200, 1437)))
    runs = runs.assign(n=runs["n"].astype(object).where(runs["n"] != 1437, "all"),
                       unfrozen_blocks=runs["unfrozen_blocks"].replace({"3": "-1"}))
    linf = runs["source_norm"] == "linf"
    runs.loc[linf, "source_eps"] = 4.0  # written in 1/255 units, as the paper's logs do
    path, _ = _write(tmp_path, runs)
    with pytest.raises(ConfigError, match="--n-all digits=SIZE"):
        read_runs_csv(path)
    res = analyze_csv(path, tmp_path / "rep", n_all={"digits": 1437}, figures=False)
    assert set(res.runs["unfrozen_blocks"]) == {"0", "all"}
    assert set(res.runs.loc[res.runs["n_label"] == "all", "n"]) == {1437}
    names = dict(zip(res.sources["source"], res.sources["name"], strict=True))
    assert names["linf-eps4"] == "Linf eps 4/255"
    md = res.markdown_path.read_text()
    assert "Linf eps read in 1/255 units (values 4 mean 4 / 255)" in md
    assert "n = all (or -1) read as the full training set (digits: 1,437 images)" in md
    assert "unfrozen_blocks -1 read as 'all'" in md
    assert "all blocks" in md and "-1 block" not in md
