"""``analyze`` end to end: result frames, tables, figures, the HTML/Markdown report, the CLI."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from synthetic_study import SyntheticStudy, make_study

from robust_transfer.analysis import AnalysisResult, Reference, analyze, analyze_study
from robust_transfer.analysis.palette import PALETTE
from robust_transfer.analysis.plots import colors_of, figures_vs_epochs, figures_vs_n
from robust_transfer.cli import main

SPEC = "name: tiny <study>\nsources: [natural, l2-eps3]\n"


def _runs_with_all_label() -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, epochs = make_study(SyntheticStudy(targets=("digits", "fashion-mnist"),
                                             ns=(100, 200, 400, 1437)))
    runs.loc[runs["n"] == 1437, "n_label"] = "all"
    return runs, epochs


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> AnalysisResult:
    runs, epochs = _runs_with_all_label()
    out = tmp_path_factory.mktemp("report")
    return analyze(runs, epochs, out, spec_text=SPEC, total_runs=len(runs) + 16)


def test_result_frames_and_tables(result):
    assert len(result.runs) == 2 * 4 * 4 * 2 * 3
    assert set(result.summary["n_seeds"]) == {3}
    assert list(result.sources["source"])[0] == "natural"
    acc = result.tables["accuracy"][("0", "8")]
    assert list(acc.columns) == ["target", "n", "natural", "L2 eps 0.5", "L2 eps 3",
                                 "Linf eps 4/255"]
    digits = acc[acc["target"] == "digits"]
    assert list(digits["n"]) == ["100", "200", "400", "all"]
    assert re.fullmatch(r"\d+\.\d ± \d+\.\d \(3\)", digits["natural"].iloc[0])
    assert set(result.tables) == {"accuracy", "delta", "blocks", "image_factors",
                                  "epoch_factors"}
    assert set(result.tables["delta"]) == {("0", "8"), ("3", "8")}
    # the block comparison: head only (the fewest) minus the last 3 blocks, paired by seed
    assert result.block_baseline == "0" and set(result.tables["blocks"]) == {("3", "8")}
    assert np.allclose(result.block_summary["mean"], -0.02, atol=0.015)  # synthetic bonus 0.02


def test_headlines_come_first_and_say_what_is_missing(result):
    assert result.headlines[0].startswith("Partial study: 192 of 208 runs finished (16 missing)")
    assert sum("fewer images" in line for line in result.headlines) == 6  # 3 sources x 2 targets
    html = result.html_path.read_text()
    assert html.index("<b>few images:</b>") < html.index("<b>few epochs:</b>") < \
        html.index("alt='verdict_digits'") < html.index("Headline findings") < \
        html.index("<h2>Figures") < html.index("Accuracy</h2>")


def test_html_is_self_contained_and_every_image_decodes(result):
    html = result.html_path.read_text()
    assert not re.search(r"(src|href)=['\"](https?:|//|file:)", html)
    assert "<script" not in html and "<link" not in html
    images = re.findall(r"<img src='data:image/png;base64,([^']+)'", html)
    assert len(images) == len(re.findall(r"<img\b", html)) == 2 + 4 + 1  # verdicts, 1a-2b, eps
    for data in images:
        pixels = mpimg.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert pixels.shape[0] > 200 and pixels.std() > 0.05
    assert "name: tiny &lt;study&gt;" in html  # the spec, escaped
    assert "scipy" in html and "Environment" in html


def test_figures_are_written_as_png_and_svg(result):
    assert set(result.figures) == {"verdict_digits", "verdict_fashion-mnist",
                                   "fig1a_accuracy_vs_n", "fig1b_delta_vs_n",
                                   "fig2a_accuracy_vs_epochs", "fig2b_delta_vs_epochs",
                                   "fig3_accuracy_vs_eps"}
    for key, paths in result.figures.items():
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if key.startswith(("fig1", "fig2")):  # the paper's figures also as SVG
            assert ET.parse(paths["svg"]).getroot().tag.endswith("svg")
        else:
            assert set(paths) == {"png"}


def test_markdown_has_headlines_tables_and_figure_links(result):
    md = result.markdown_path.read_text()
    assert md.index("## Headline findings") < md.index("## Figures")
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (result.markdown_path.parent / link).is_file()
    assert "| target | n | natural | L2 eps 0.5 |" in md


def test_one_colour_per_source_in_every_figure(result):
    colors = colors_of(result.sources)
    assert colors["natural"] == "#222222" and colors["l2-eps0.5"] == PALETTE[0]
    specs = figures_vs_n(result.summary, result.delta_summary, result.sources) + \
        figures_vs_epochs(result.epoch_summary, result.epoch_delta_summary, result.sources,
                          result.view)
    expected = {c.lower() for c in colors.values()}
    for spec in specs:
        axes = spec.figure.axes
        assert len(axes) == 2 * 2  # targets x unfrozen settings
        used = {line.get_color().lower() for ax in axes for line in ax.lines
                if line.get_linestyle() == "-"}
        assert used <= expected and len(used) >= 3


def test_reference_setting_is_quoted(tmp_path):
    runs, epochs = make_study()
    res = analyze(runs, epochs, None, reference=Reference(unfrozen_blocks="3"))
    assert res.html_path is None and res.figures == {}
    assert "last 3 blocks, 8 epochs" in res.headlines[0]


def test_only_baseline_finished_is_said_and_still_reported(tmp_path):
    runs, epochs = make_study()
    natural = runs[runs["source"] == "natural"]
    res = analyze(natural, epochs, tmp_path, total_runs=len(runs), figures=False)
    assert res.headlines[-1].startswith("Only one source (natural) has finished runs")
    assert res.delta_summary.empty and res.image_factors.summary.empty
    assert "Nothing to show" in res.html_path.read_text()


def _csv(tmp_path) -> str:
    runs, _ = make_study()
    path = tmp_path / "results.csv"
    runs[["source", "target", "n", "unfrozen_blocks", "epochs", "seed", "test_acc"]].to_csv(
        path, index=False)
    return str(path)


def test_cli_analyze_csv(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["analyze", "--csv", _csv(tmp_path), "--out", str(out), "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "fewer images" in printed and f"report: {out / 'report.html'}" in printed
    assert (out / "report.md").is_file()
    assert "so no epoch figures or epoch factors" in (out / "report.html").read_text()


def test_cli_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"source": ["natural"], "test_acc": [0.5]}).to_csv(bad, index=False)
    cases = [(["analyze", "--csv", str(bad)], "missing column(s): target, n, unfrozen_blocks"),
             (["analyze", str(tmp_path / "nope")], "does not exist"),
             (["analyze"], "exactly one"),
             (["analyze", "--csv", _csv(tmp_path), "--baseline", "imagenet"], "not a source")]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_cli_study_dir_that_is_not_a_study(tmp_path, capsys):
    assert main(["analyze", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "analysis").exists()


def test_cli_study_dir_through_the_store(tmp_path, capsys):
    runs, epochs = make_study()
    _fill_real_store(tmp_path, runs, epochs, unfinished=10)
    assert main(["analyze", str(tmp_path), "--no-figures", "--ci", "bootstrap"]) == 0
    out = capsys.readouterr().out
    assert "110 of 120 runs finished (10 missing)" in out
    assert out.splitlines()[1].startswith("few images: ")
    assert out.splitlines()[2].startswith("few epochs: ")
    html = (tmp_path / "analysis" / "report.html").read_text()
    assert "name: tiny &lt;study&gt;" in html and "bootstrap interval" in html


def test_unfinished_rows_in_a_store_are_counted(tmp_path):
    runs, epochs = make_study()
    runs.loc[runs.index[:20], "status"] = "failed"
    res = analyze(runs, epochs, None)
    assert res.coverage.excluded == 20 and len(res.runs) == 100
    assert not np.isnan(res.image_factors.summary["factor"]).all()


def _fill_real_store(study_dir, runs: pd.DataFrame, epochs: pd.DataFrame, unfinished: int) -> None:
    from robust_transfer.study.store import RECIPE_COLUMNS, RunOutcome, StudyStore

    recipe = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step",
              "batch_size": 128, "augment": "[]", "resolution": 16, "head_init": "normal",
              "eval_every": 1}
    rows = [{**r, "config": "{}", **{k: recipe.get(k) for k in RECIPE_COLUMNS}}
            for r in runs.to_dict("records")]
    curves = {rid: part.to_dict("records") for rid, part in epochs.groupby("run_id")}
    with StudyStore(study_dir, create=True) as store:
        store.plan(rows, store.add_spec("all", len(rows), "tiny", SPEC))
        for row in rows[unfinished:]:
            store.record(RunOutcome(run_id=row["run_id"], status="finished", started_at=0.0,
                                    finished_at=1.0, n=row["n"],
                                    history=tuple(curves[row["run_id"]])))


def test_analyze_a_real_study_store(tmp_path):
    runs, epochs = make_study()
    _fill_real_store(tmp_path, runs, epochs, unfinished=12)
    res = analyze_study(tmp_path, figures=False)
    assert (res.coverage.finished, res.coverage.total) == (108, 120)
    assert res.headlines[0].startswith("Partial study: 108 of 120 runs finished (12 missing)")
    assert res.spec_text and "tiny &lt;study&gt;" in res.html_path.read_text()
    assert res.html_path == tmp_path / "analysis" / "report.html"
    assert not res.recipe  # one recipe throughout: no caution
