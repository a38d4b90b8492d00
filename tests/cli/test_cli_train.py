"""``pretrain``, ``evaluate`` and ``finetune`` through ``robust_transfer.cli.main``.

End to end on tiny settings, and bad input: one error line on stderr, exit status 2,
nothing written.
"""

from __future__ import annotations

import json

import pytest
import torch
from cli_support import run_cli

from robust_transfer.models import build_architecture
from robust_transfer.models.checkpoints import load_model, save_model

PRETRAIN = ["pretrain", "--dataset", "digits", "--input-size", "12", "--epochs", "1",
            "--train-images", "300", "--eval-images", "100", "--batch-size", "64", "--lr", "0.05",
            "--device", "cpu"]


def listing(folder) -> dict:
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture
def source(tmp_path):
    """A small_resnet source checkpoint on digits at 12 px (random weights: only shapes matter)."""
    torch.manual_seed(0)
    model = build_architecture("small_resnet", 10, input_size=12)
    save_model(model, tmp_path / "src", {"source_dataset": "digits", "training": "natural"})
    return tmp_path / "src"


def test_pretrain_evaluate_finetune_end_to_end(tmp_path, capsys):
    code, out, err = run_cli([*PRETRAIN, "--attack", "pgd", "--eps", "0.5", "--attack-steps", "2",
                              "--out", tmp_path / "src"], capsys)
    assert code == 0, err
    assert "saved" in out and "robust acc" in out and "epoch 1" in err
    model, meta = load_model(tmp_path / "src")
    assert meta["training"] == "pgd" and meta["eps"] == 0.5 and meta["source_dataset"] == "digits"
    assert meta["command"].startswith("robust-transfer")

    code, out, err = run_cli(["evaluate", tmp_path / "src", "--images", "100", "--eps", "0.5",
                              "--eps", "0", "--steps", "3", "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["dataset"] == "digits" and report["images"] == 100
    clean, robust, zero = (r["accuracy"] for r in report["results"])
    # the same 100 class-balanced test images that pretrain measured
    assert clean == pytest.approx(meta["clean_acc"], abs=1e-9)
    assert robust <= clean and zero == clean

    code, out, err = run_cli(["finetune", tmp_path / "src", "--target", "digits", "--n", "100",
                              "--epochs", "2", "--unfrozen-blocks", "1", "--batch-size", "32",
                              "--device", "cpu", "--json", "--out", tmp_path / "ft"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["n"] == 100 and summary["unfrozen_blocks"] == "1" and summary["cached_prefix"]
    assert 0 <= summary["test_acc"] <= 1
    tuned, tuned_meta = load_model(tmp_path / "ft")
    assert tuned_meta["training"] == "finetune" and tuned_meta["source_metadata"]["eps"] == 0.5
    frozen = [k for k in model.state_dict() if k.startswith(("net.conv1", "net.bn1", "net.layer1"))]
    for key in frozen:  # the frozen part of the source came through unchanged
        assert torch.equal(tuned.state_dict()[key], model.state_dict()[key]), key

    code, out, err = run_cli(["evaluate", tmp_path / "ft", "--dataset", "digits", "--images", "50",
                              "--device", "cpu"], capsys)
    assert code == 0, err
    assert "clean" in out


def test_finetune_head_only_prints_a_summary(source, capsys):
    code, out, err = run_cli(["finetune", source, "--n", "50", "--epochs", "1", "--device", "cpu"],
                             capsys)
    assert code == 0, err
    assert "-> digits: n=50 unfrozen=0" in out and "test acc" in out


def assert_refused(tmp_path, capsys, argv, *expected, library_error=True):
    before = listing(tmp_path)
    code, out, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert out == ""
    if library_error:
        assert len(lines) == 1, err
    assert lines[-1].startswith(("error:", "robust-transfer")) and "error:" in lines[-1]
    for word in expected:
        assert word in lines[-1], lines[-1]
    assert listing(tmp_path) == before  # nothing written, nothing touched


def test_unknown_dataset(tmp_path, capsys):
    assert_refused(tmp_path, capsys, [*PRETRAIN, "--dataset", "cifar11", "--out", tmp_path / "m"],
                   "cifar11", "digits", "fmnist")


def test_missing_dataset_files(tmp_path, capsys):
    assert_refused(tmp_path, capsys, [*PRETRAIN, "--dataset", "mnist", "--data-root", tmp_path,
                                      "--out", tmp_path / "m"], "train-images-idx3-ubyte")


def test_unknown_target_and_source(tmp_path, source, capsys):
    assert_refused(tmp_path, capsys, ["finetune", source, "--target", "nope"], "nope", "digits")
    assert_refused(tmp_path, capsys, ["finetune", tmp_path / "missing", "--target", "digits"],
                   "missing")


def test_n_too_large(tmp_path, source, capsys):
    assert_refused(tmp_path, capsys, ["finetune", source, "--n", "5000", "--out", tmp_path / "ft"],
                   "5000", "1348")
    assert_refused(tmp_path, capsys, [*PRETRAIN, "--train-images", "99999", "--out", tmp_path / "m"],
                   "99999")


def test_unfrozen_too_large_or_malformed(tmp_path, source, capsys):
    assert_refused(tmp_path, capsys, ["finetune", source, "--unfrozen-blocks", "4",
                                      "--out", tmp_path / "ft"], "3 blocks")
    assert_refused(tmp_path, capsys, ["finetune", source, "--unfrozen-blocks", "-1"], "-1")
    assert_refused(tmp_path, capsys, ["finetune", source, "--unfrozen-blocks", "some"], "some")


def test_existing_output_without_overwrite(tmp_path, source, capsys):
    (tmp_path / "m.json").write_text("{}")
    assert_refused(tmp_path, capsys, [*PRETRAIN, "--out", tmp_path / "m"], "--overwrite")
    assert_refused(tmp_path, capsys, ["finetune", source, "--out", source], "--overwrite")
    assert (tmp_path / "m.json").read_text() == "{}"


def test_negative_eps_in_evaluate(tmp_path, source, capsys):
    assert_refused(tmp_path, capsys, ["evaluate", source, "--eps", "-0.5"], "eps",
                   library_error=False)


# argparse rejects these before the library sees them; it prints its usage block first.
@pytest.mark.parametrize("argv,word", [
    (["--arch", "resnet1000"], "resnet1000"),
    (["--attack", "pgd", "--eps", "-1"], "eps"),
    (["--attack-steps", "-2"], "-2"),
    (["--epochs", "0"], "0"),
])
def test_usage_errors_exit_2_and_write_nothing(tmp_path, capsys, argv, word):
    assert_refused(tmp_path, capsys, [*PRETRAIN, *argv, "--out", tmp_path / "m"], word,
                   library_error=False)


def test_usage_errors_are_one_line(tmp_path, capsys):
    code, _, err = run_cli([*PRETRAIN, "--arch", "resnet1000", "--out", tmp_path / "m"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_recorded_command_is_the_one_given_to_main(tmp_path, capsys):
    code, _, err = run_cli([*PRETRAIN, "--out", tmp_path / "m"], capsys)
    assert code == 0, err
    _, meta = load_model(tmp_path / "m")
    assert meta["command"].startswith("robust-transfer pretrain --dataset digits")
