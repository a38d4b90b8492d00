"""Run ids are sha256 of RunConfig.to_dict(): pinned values computed before the typed settings.

Stores created by earlier versions must resume with the same ids; these were computed on
main before unfrozen blocks became ``int | ALL`` and ``n`` ``int | None`` end to end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from robust_transfer.errors import ConfigError
from robust_transfer.models.finetune import ALL, parse_n, parse_unfrozen
from robust_transfer.study.spec import RunConfig, load_spec, run_set_id

REPO = Path(__file__).resolve().parents[2]


def test_embedded_study_keeps_its_run_ids():
    runs = load_spec(REPO / "studies" / "embedded.yaml").runs()
    assert len(runs) == 96
    assert run_set_id([r.run_id for r in runs]) == "4f2dfdf16d2d8544"
    assert (runs[0].run_id, runs[-1].run_id) == ("0b5821d9beb2bfe0", "8e478bf9f5de75dc")
    assert runs[0].to_dict()["unfrozen_blocks"] == "0" and runs[0].to_dict()["n"] == "25"


def test_paper_study_keeps_its_run_set():
    runs = load_spec(REPO / "studies" / "paper.yaml").runs()
    assert (len(runs), run_set_id([r.run_id for r in runs])) == (7776, "0e36e5a13346ea77")


def test_all_and_int_settings_keep_their_ids_and_types():
    spec = load_spec({"name": "pin", "sources": [{"model": "fmnist-natural", "label": "natural"}],
                      "targets": ["digits"], "train_images": [100, "all"],
                      "unfrozen_blocks": [3, "all"], "epochs": [2], "seeds": [0],
                      "recipe": {"lr": 0.01}})
    got = {(r.n, r.unfrozen_blocks): r.run_id for r in spec.runs()}
    assert got == {(100, 3): "b493db7be1a0f6dc", (100, ALL): "3ce0ff6e506cbc10",
                   (None, 3): "ce2aeaacf371eb7c", (None, ALL): "432aae3e95a5fb0a"}
    for run in spec.runs():
        assert isinstance(run.unfrozen_blocks, int) or run.unfrozen_blocks is ALL
        back = RunConfig.from_dict(run.to_dict())
        assert back == run and back.run_id == run.run_id
        assert back.unfrozen_blocks is run.unfrozen_blocks or back.unfrozen_blocks == run.unfrozen_blocks


@pytest.mark.parametrize("text, value", [("0", 0), ("12", 12), (7, 7), ("all", ALL), (ALL, ALL)])
def test_one_parser_for_unfrozen_blocks(text, value):
    assert parse_unfrozen(text) == value and type(parse_unfrozen(text)) is type(value)


@pytest.mark.parametrize("bad", ["-1", -1, True, "x", 1.5, None, "ALL"])
def test_unfrozen_parser_refuses(bad):
    with pytest.raises(ConfigError, match="non-negative integer or 'all'"):
        parse_unfrozen(bad)


@pytest.mark.parametrize("bad", ["0", 0, -3, False, "many", 2.0])
def test_n_parser_refuses(bad):
    with pytest.raises(ConfigError, match="positive integer or 'all'"):
        parse_n(bad)


def test_n_parser_accepts():
    assert (parse_n("all"), parse_n(None), parse_n("200"), parse_n(200)) == (None, None, 200, 200)
