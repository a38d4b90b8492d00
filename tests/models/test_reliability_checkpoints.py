"""Checkpoint metadata cannot lie quietly: a typed schema, and a copy in the weights' header."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from robust_transfer.cli import main
from robust_transfer.errors import CheckpointError, ConfigError
from robust_transfer.models import build_architecture, save_model
from robust_transfer.models.checkpoints import (
    FORMAT_NAME,
    embed_header,
    load_model,
    read_header_metadata,
    read_metadata,
    sha256_file,
)
from robust_transfer.models.zoo import EMBEDDED_DIR


def _save(folder: Path, name: str = "m", **meta) -> Path:
    torch.manual_seed(0)
    model = build_architecture("small_resnet", 10, mean=(0.3,) * 3, std=(0.35,) * 3, input_size=16)
    return save_model(model, folder / name, {"training": "pgd", "eps": 0.5, "norm": "l2",
                                             "source_dataset": "digits", **meta})


def _edit(weights: Path, **changes) -> Path:
    meta_path = weights.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta.update(changes)
    meta_path.write_text(json.dumps(meta))
    return meta_path


def test_the_header_holds_the_facts_and_agrees_with_the_sidecar(tmp_path):
    weights = _save(tmp_path)
    facts = read_header_metadata(weights)
    meta = read_metadata(weights)
    assert facts["input_size"] == 16 and facts["eps"] == 0.5 and facts["format"] == FORMAT_NAME
    assert all(meta[k] == v for k, v in facts.items())


@pytest.mark.parametrize("field, value", [("input_size", 28), ("eps", 3.0), ("norm", "linf"),
                                          ("num_classes", 100), ("mean", [0.5, 0.5, 0.5]),
                                          ("arch", "resnet18"), ("training", "natural")])
def test_a_sidecar_that_disagrees_with_the_header_is_refused(tmp_path, field, value):
    weights = _save(tmp_path)
    _edit(weights, **{field: value})
    for read in (read_metadata, load_model):
        with pytest.raises(CheckpointError, match=f"disagree on {field}") as err:
            read(weights)
        assert "\n" not in str(err.value)


def test_a_sidecar_that_drops_a_fact_is_refused(tmp_path):
    weights = _save(tmp_path)
    meta_path = weights.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    del meta["eps"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="disagree on eps"):
        read_metadata(weights)


@pytest.mark.parametrize("field, value, phrase", [
    ("eps", "three", "finite number"), ("eps", -1, "finite number"), ("eps", [1], "finite number"),
    ("input_size", "16", "8..4096"), ("input_size", 100000, "8..4096"), ("input_size", True, "8..4096"),
    ("num_classes", 0, ">= 1"), ("num_classes", 2.5, ">= 1"), ("mean", [0.1, 0.2], "1 or 3"),
    ("mean", "0.3", "1 or 3"), ("std", [0.3, 0.0, 0.3], "> 0"), ("clean_acc", 1.5, "[0, 1]"),
    ("robust_acc", "high", "[0, 1]"), ("norm", "l3", "'l2'"), ("format_version", "1", "integer"),
    ("sha256", "abc", "hex"), ("channels", 2, "1 or 3"), ("attack_steps", -1, ">= 0"),
])
def test_the_schema_refuses_wrong_types_and_ranges_in_one_line(tmp_path, field, value, phrase):
    weights = _save(tmp_path)
    _edit(weights, **{field: value})
    with pytest.raises(CheckpointError) as err:
        read_metadata(weights)
    message = str(err.value)
    assert f"field '{field}'" in message and phrase in message and "\n" not in message


def test_the_cli_reports_bad_metadata_in_one_line(tmp_path, capsys):
    weights = _save(tmp_path)
    _edit(weights, eps="three")
    assert main(["evaluate", str(weights), "--dataset", "digits", "--images", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:") and "field 'eps'" in err


def test_save_model_refuses_metadata_that_breaks_the_schema_and_writes_nothing(tmp_path):
    with pytest.raises(ConfigError, match="field 'eps'"):
        _save(tmp_path, eps="3")
    with pytest.raises(ConfigError, match="field 'clean_acc'"):
        _save(tmp_path, name="n", clean_acc=93.0)
    assert list(tmp_path.iterdir()) == []


def _old_style(folder: Path) -> Path:
    """A checkpoint as written before the header held metadata."""
    weights = _save(folder)
    save_file(load_file(str(weights)), str(weights), metadata={"format": FORMAT_NAME})
    _edit(weights, sha256=sha256_file(weights))
    return weights


def test_older_checkpoints_without_header_facts_still_load(tmp_path):
    weights = _old_style(tmp_path)
    assert read_header_metadata(weights) is None
    model, meta = load_model(weights)
    assert model.input_size == 16 and meta["eps"] == 0.5
    _edit(weights, input_size=28)  # no header to compare with: only the schema holds
    assert read_metadata(weights)["input_size"] == 28


def test_embed_header_keeps_every_tensor_bit_identical(tmp_path):
    weights = _old_style(tmp_path)
    before = load_file(str(weights))
    old_sha = read_metadata(weights)["sha256"]
    embed_header(weights)
    after = load_file(str(weights))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype
               for k in before)
    meta = read_metadata(weights)
    assert meta["sha256"] == sha256_file(weights) != old_sha
    assert read_header_metadata(weights)["input_size"] == 16
    load_model(weights)


def test_the_embedded_zoo_carries_its_facts_in_the_header(tmp_path):
    for meta_path in sorted(EMBEDDED_DIR.glob("*.json")):
        weights = meta_path.with_suffix(".safetensors")
        facts = read_header_metadata(weights)
        assert facts is not None, f"{weights.name} lacks header facts: run embed_header on it"
        assert facts["input_size"] == 28 and facts["num_classes"] == 10
        copy = Path(shutil.copy(meta_path, tmp_path / meta_path.name))
        shutil.copy(weights, tmp_path / weights.name)
        _edit(tmp_path / weights.name, input_size=16)  # the case: 28 claimed as 16
        with pytest.raises(CheckpointError, match="disagree on input_size"):
            load_model(copy)
