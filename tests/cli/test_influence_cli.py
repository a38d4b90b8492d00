"""``robust-transfer influence`` and ``saliency``: outputs on success, one line and exit 2 on bad input."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
import torch

from robust_transfer.cli import build_parser, main
from robust_transfer.models import build_architecture
from robust_transfer.models.checkpoints import save_model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two seeded, untrained digits models saved in our format, and a 3-class one."""
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name, seed, classes in (("robust", 0, 10), ("natural", 1, 10), ("three", 2, 3)):
        torch.manual_seed(seed)
        model = build_architecture("small_resnet", classes, mean=(0.3,) * 3, std=(0.35,) * 3,
                             input_size=16)
        paths[name] = save_model(model, root / name, {"source_dataset": "digits"})
    return paths


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def influence_args(checkpoints, out, *extra):
    return ["influence", "-c", f"robust={checkpoints['robust']}", "-c",
            f"natural={checkpoints['natural']}", "--dataset", "digits", "--n", "100",
            "--test-n", "20", "--out", out, "--max-rank", "20", "--grid", "2", "3", *extra]


def test_influence_command_writes_outputs(tmp_path, checkpoints, capsys):
    out = tmp_path / "inf"
    code, stdout, err = run(influence_args(checkpoints, out), capsys)
    assert code == 0
    assert "robust: solver cholesky, damping 0.001, form direct (exact); top-1 class match (test targets)" in stdout
    # progress on stderr: the solver's steps counted over both models, to the end
    done = re.search(r"influence: done (\d+)/(\d+) steps", err)
    assert done and done[1] == done[2] and int(done[2]) % 2 == 0, err
    assert (out / "class_match.png").is_file() and (out / "influence_grid.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "digits" and summary["models"]["natural"]["n_train"] == 100
    assert (out / "robust" / "influence.npz").is_file()
    code, _, err = run(influence_args(checkpoints, out), capsys)
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1
    assert run(influence_args(checkpoints, out, "--overwrite"), capsys)[0] == 0


@pytest.mark.parametrize("extra, message", [
    (["--damping", "0", "--n", "30"], "singular at damping 0"),
    (["--memory-limit-gb", "1e-6"], "no influence form fits 1.0 KiB"),  # and names the cheapest:
    (["--memory-limit-gb", "1e-6"], "the cheapest, form 'kfac' with held scores, needs about 556.4 KiB"),
    (["--form", "kfac", "--damping", "0"], "form 'kfac' needs damping > 0"),
    (["--solver", "pinv", "--rcond", "2"], "rcond must lie in (0, 1)"),
])
def test_influence_bad_input_is_one_line(tmp_path, checkpoints, capsys, extra, message):
    code, _, err = run(influence_args(checkpoints, tmp_path / "x", *extra), capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_influence_kfac_streamed_says_so(tmp_path, checkpoints, capsys):
    out = tmp_path / "kfac"
    code, stdout, _ = run(influence_args(checkpoints, out, "--form", "kfac", "--scores", "stream"), capsys)
    assert code == 0
    assert "form kfac (approximate: form 'kfac' as asked), scores streamed" in stdout
    rec = json.loads((out / "summary.json").read_text())["models"]["robust"]
    assert (rec["form"], rec["exact"], rec["scores"]) == ("kfac", False, "stream")
    with np.load(out / "robust" / "influence.npz") as npz:
        assert "scores" not in npz and npz["top_helpful"].shape == (20, 10)
        assert npz["self_influence"].shape == (100,) and (npz["self_influence"] <= 0).all()


def test_class_mismatch_and_missing_checkpoint(tmp_path, checkpoints, capsys):
    args = ["influence", "-c", checkpoints["three"], "--dataset", "digits", "--n", "50",
            "--out", tmp_path / "y"]
    code, _, err = run(args, capsys)
    assert code == 2 and "3 classes but dataset 'digits' has 10" in err
    args[2] = tmp_path / "nope.safetensors"
    assert run(args, capsys)[0] == 2


def test_saliency_command(tmp_path, checkpoints, capsys):
    out = tmp_path / "sal"
    code, stdout, _ = run(["saliency", "-c", f"natural={checkpoints['natural']}", "-c",
                           f"robust={checkpoints['robust']}", "--dataset", "digits", "--count", "4",
                           "--smoothgrad", "2", "--out", out], capsys)
    assert code == 0 and "saliency of 4 test images under natural, robust" in stdout
    assert (out / "saliency.png").is_file() and (out / "gradients.npz").is_file()
    code, _, err = run(["saliency", "-c", checkpoints["robust"], "--dataset", "digits",
                        "--indices", "0,99999", "--out", tmp_path / "z"], capsys)
    assert code == 2 and "--indices must lie in" in err


def test_every_option_has_help():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("influence", "saliency"):
        for action in sub.choices[name]._actions:
            assert action.help, f"{name} {action.option_strings} has no help"


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, checkpoints):
    """A head fine-tuned by `finetune --out` on 60 digits images with seed 2."""
    out = tmp_path_factory.mktemp("ft") / "ft"
    code = main(["finetune", str(checkpoints["robust"]), "--target", "digits", "--n", "60",
                 "--seed", "2", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
                 "--out", str(out)])
    assert code == 0
    return out.with_suffix(".safetensors")


def test_influence_takes_target_n_and_seed_from_the_checkpoint(tmp_path, finetuned, capsys):
    out = tmp_path / "inf"
    code, _, err = run(["influence", "-c", f"ft={finetuned}", "--test-n", "20", "--max-rank", "10",
                        "--grid", "2", "2", "--out", out], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["dataset"], summary["n"], summary["seed"]) == ("digits", 60, 2)
    from robust_transfer.data import balanced_subset, load_dataset

    labels = load_dataset("digits", "train").labels.numpy()
    saved = np.load(out / "ft" / "influence.npz")
    assert np.array_equal(np.sort(saved["train_indices"]), np.sort(balanced_subset(labels, 60, 2, "digits")))


@pytest.mark.parametrize("extra, message", [
    (["--n", "all"], "--n all contradicts the checkpoints, fine-tuned with n 60"),
    (["--seed", "0"], "--seed 0 contradicts the checkpoints, fine-tuned with seed 2"),
    (["--dataset", "fmnist"], "--dataset fmnist contradicts the checkpoints"),
])
def test_options_contradicting_the_checkpoint_are_refused(tmp_path, finetuned, capsys, extra, message):
    out = tmp_path / "bad"
    code, _, err = run(["influence", "-c", finetuned, *extra, "--out", out], capsys)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()
    if extra[0] != "--n":
        code, _, err = run(["saliency", "-c", finetuned, *extra, "--out", out], capsys)
        assert code == 2 and message in err


def test_form_and_precision_options_reach_the_solver(tmp_path, checkpoints, capsys):
    """Each exact form gives the same scores; the summary records which ran."""
    scores = {}
    for form, precision in (("direct", "float64"), ("kernel", "float64"), ("direct", "mixed")):
        out = tmp_path / f"{form}-{precision}"
        code, _, err = run(influence_args(checkpoints, out, "--form", form, "--precision", precision),
                           capsys)
        assert code == 0, err
        summary = json.loads((out / "summary.json").read_text())["models"]["robust"]
        assert (summary["form"], summary["precision"]) == (form, precision)
        with np.load(out / "robust" / "influence.npz") as z:
            scores[form, precision] = z["scores"]
    ref = scores["direct", "float64"]
    for key, value in scores.items():
        assert np.allclose(value, ref, rtol=0, atol=1e-8 * np.abs(ref).max()), key


def test_a_checkpoint_name_never_writes_outside_out(tmp_path, checkpoints, capsys):
    victim = tmp_path / "escape" / "influence.npz"
    victim.parent.mkdir()
    victim.write_bytes(b"the user's own file")
    out = tmp_path / "inf"
    code, _, err = run(["influence", "-c", f"../escape={checkpoints['robust']}", "-c",
                        f"/abs/b={checkpoints['natural']}", "--dataset", "digits", "--n", "30",
                        "--test-n", "10", "--out", out, "--max-rank", "5", "--grid", "1", "2"],
                       capsys)
    assert code == 0, err
    assert victim.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["escape", "inf"]
    folders = sorted(p.parent.name for p in out.glob("*/influence.npz"))
    assert len(folders) == 2 and all("/" not in f and not f.startswith(".") for f in folders)
    assert set(json.loads((out / "summary.json").read_text())["models"]) == {"../escape", "/abs/b"}
