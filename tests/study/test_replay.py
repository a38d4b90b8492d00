"""Influence and saliency on study runs: a finished run is re-fine-tuned from its config."""

from __future__ import annotations

import json

import pytest
from study_support import make_sources, write_spec

from robust_transfer.cli import main
from robust_transfer.errors import ConfigError
from robust_transfer.study.replay import replay_run
from robust_transfer.study.runner import run_study
from robust_transfer.study.store import load_results


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("replay")
    spec = write_spec(folder, make_sources(folder), body="""\
        train_images: [40]
        unfrozen_blocks: [0, 1]
        epochs: 2
        seeds: [0]
        recipe: {lr: 0.05, batch_size: 16}
        """)
    out = folder / "study"
    run_study(spec, out)
    runs, _ = load_results(out)
    return out, runs


def test_replay_reproduces_the_stored_accuracy(study):
    out, runs = study
    for row in runs.itertuples():
        replay = replay_run(out, row.run_id[:8])
        assert replay.run_id == row.run_id
        assert replay.result.test_acc == pytest.approx(row.test_acc, abs=1e-12)
        assert len(replay.result.train_indices) == 40


def test_unknown_run_is_one_clear_error(study):
    out, _ = study
    with pytest.raises(ConfigError, match="not in"):
        replay_run(out, "ffffffffffff")


def test_influence_on_study_runs(study, tmp_path, capsys):
    out, runs = study
    rows = runs[runs.unfrozen_blocks == "0"].set_index("source")
    dest = tmp_path / "inf"
    code = main(["influence", "--study", str(out), "--run", f"robust={rows.loc['robust', 'run_id']}",
                 "--run", f"natural={rows.loc['natural', 'run_id']}", "--test-n", "60",
                 "--out", str(dest)])
    assert code == 0
    summary = json.loads((dest / "summary.json").read_text())
    assert set(summary["models"]) == {"robust", "natural"}
    assert summary["runs"]["robust"]["replayed_test_acc"] == pytest.approx(
        summary["runs"]["robust"]["stored_test_acc"])
    assert (dest / "class_match.png").stat().st_size > 0


def test_checkpoint_and_run_are_exclusive(study, tmp_path, capsys):
    out, runs = study
    code = main(["saliency", "--study", str(out), "--run", runs.run_id[0], "-c", "x.safetensors",
                 "--out", str(tmp_path / "s")])
    assert code == 2
    assert "either --checkpoint" in capsys.readouterr().err
