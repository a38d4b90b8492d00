"""Study presets ship inside the package and are named wherever a spec is asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import robust_transfer
from robust_transfer.cli import main
from robust_transfer.errors import ConfigError
from robust_transfer.study import load_spec
from robust_transfer.study.presets import PRESET_DIR, list_presets, resolve_spec_path


def test_presets_live_in_the_package():
    assert PRESET_DIR == Path(robust_transfer.__file__).parent / "studies"
    names = {p.name: p for p in list_presets()}
    assert {"embedded", "paper"} <= set(names)
    assert names["embedded"].description.startswith("embedded zoo sources")
    assert resolve_spec_path("embedded") == PRESET_DIR / "embedded.yaml"
    assert load_spec(resolve_spec_path("paper")).name == "paper"


def test_a_path_wins_over_a_preset_and_unknown_names_are_refused(tmp_path, monkeypatch):
    own = tmp_path / "embedded"  # a file named like a preset, in the working directory
    own.write_text("name: mine\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_spec_path("embedded") == Path("embedded")
    with pytest.raises(ConfigError, match=r"'nope' is neither a YAML file nor a preset name "
                       r"\(presets: embedded, paper"):
        resolve_spec_path("nope")
    with pytest.raises(ConfigError, match="neither"):
        resolve_spec_path("sub/embedded")  # a missing path is not looked up as a preset


def test_cli_lists_prints_and_runs_presets(tmp_path, capsys):
    assert main(["study", "presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("embedded ") for line in lines)
    assert main(["study", "presets", "embedded"]) == 0
    text = capsys.readouterr().out
    assert text == (PRESET_DIR / "embedded.yaml").read_text()
    assert yaml.safe_load(text)["name"] == "embedded"
    assert main(["study", "run", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "neither a YAML file nor a preset" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_load_spec_takes_a_preset_name_or_says_which_exist(tmp_path):
    assert load_spec("paper").name == "paper" and load_spec("embedded").name == "embedded"
    with pytest.raises(ConfigError, match="neither a YAML file nor a preset name .*embedded"):
        load_spec(tmp_path / "missing.yaml")
