"""The "why" in the report: influence and saliency outputs read back, the paired test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic_study import SyntheticSource, SyntheticStudy, make_study

from robust_transfer.analysis import analyze
from robust_transfer.analysis.explain import (
    InfluenceFolder,
    class_match_figure,
    find_outputs,
    paired_class_match,
    read_saliency,
    saliency_figure,
)
from robust_transfer.analysis.plots import colors_of
from robust_transfer.data import load_dataset
from robust_transfer.influence.core import compute_influence
from robust_transfer.influence.outputs import write_influence, write_json, write_npz

SOURCES = {"natural": SyntheticSource(), "l2-eps3": SyntheticSource(3.0, "l2", 3.0, 2.0)}


def _folder(matches: dict[str, np.ndarray], seed: int) -> InfluenceFolder:
    ranks = matches["natural"].shape[1]
    curve = (np.zeros(ranks), np.zeros(ranks), np.zeros(ranks))
    return InfluenceFolder(path=None, sources={m: m for m in matches},
                           seeds=dict.fromkeys(matches, seed), matches=matches,
                           curves=dict.fromkeys(matches, curve), chance=0.1, test_key=b"")


def test_paired_difference_over_images_and_over_seeds():
    nat = np.zeros((100, 10), bool)
    rob = np.zeros((100, 10), bool)
    rob[:30, 0] = True  # robust matches at rank 1 for 30 images more than natural
    one = paired_class_match([_folder({"natural": nat, "l2-eps3": rob}, 0)], "natural")
    top1 = one[one["rank"] == 1].iloc[0]
    assert top1["mean"] == pytest.approx(0.30) and top1["n_seeds"] == 1
    d = np.r_[np.ones(30), np.zeros(70)]
    half = 1.9842169515086827 * d.std(ddof=1) / 10  # t(0.975, 99) * sd / sqrt(100)
    assert (top1["lo"], top1["hi"]) == pytest.approx((0.3 - half, 0.3 + half))
    assert top1["verdict"] == "higher" and "one seed" in top1["method"]
    rob2 = rob.copy()
    rob2[30:40, 0] = True  # a second seed: +0.40
    two = paired_class_match([_folder({"natural": nat, "l2-eps3": rob}, 0),
                              _folder({"natural": nat, "l2-eps3": rob2}, 1)], "natural")
    top1 = two[two["rank"] == 1].iloc[0]
    assert top1["mean"] == pytest.approx(0.35) and top1["n_seeds"] == 2
    half = 12.706204736174696 * np.std([0.3, 0.4], ddof=1) / np.sqrt(2)
    assert (top1["lo"], top1["hi"]) == pytest.approx((0.35 - half, 0.35 + half))
    assert top1["verdict"] == "no clear difference"  # two seeds: a t(1) interval is wide
    assert set(two.loc[two["rank"] > 1, "mean"]) == {0.0}


def _features(images: torch.Tensor, labels: torch.Tensor, informative: bool,
              rng: np.random.Generator) -> torch.Tensor:
    flat = images.reshape(len(images), -1).double() / 255
    proj = torch.as_tensor(rng.normal(size=(flat.shape[1], 12)))
    feats = flat @ proj + torch.as_tensor(rng.normal(scale=2.0, size=(len(images), 12)))
    if informative:  # a "robust" model: features that carry the class
        feats = torch.cat([feats * 0.1, torch.nn.functional.one_hot(labels, 10).double() * 3], 1)
    else:
        feats = torch.cat([feats, torch.zeros(len(images), 10, dtype=torch.float64)], 1)
    return feats


def _influence_outputs(root, seeds=(0, 1)) -> list:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    train, test = train.subset(np.arange(150)), test.subset(np.arange(60))
    folders = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        results = {}
        for name, informative in (("natural", False), ("l2-eps3", True)):
            ftr = _features(train.images, train.labels, informative, rng)
            fte = _features(test.images, test.labels, informative, rng)
            weight = torch.stack([ftr[train.labels == c].mean(0) for c in range(10)]) * 0.1
            results[name] = compute_influence(ftr, train.labels, fte, test.labels, weight,
                                              torch.zeros(10, dtype=torch.float64))
        out = root / f"influence_seed{seed}"
        out.mkdir(parents=True)
        write_influence(out, results, train, test, grid_size=(3, 4),
                        test_indices=np.arange(60), extra={"seed": seed, "dataset": "digits"})
        folders.append(out)
    return folders


def test_influence_outputs_in_the_report(tmp_path):
    folders = _influence_outputs(tmp_path / "study" / "explain")
    assert find_outputs(tmp_path / "study") == (folders, [])
    runs, epochs = make_study(SyntheticStudy(sources=SOURCES))
    res = analyze(runs, epochs, tmp_path / "rep", influence=folders)
    paired = res.explanations.paired
    top1 = paired[paired["rank"] == 1].iloc[0]
    assert top1["source"] == "l2-eps3" and top1["n_seeds"] == 2 and top1["n_images"] == 60
    assert top1["mean"] > 0.3  # class-carrying features: far more class matches
    assert {"why_class_match", "why_topk_0", "why_topk_1"} <= set(res.figures)
    html = res.html_path.read_text()
    assert "Why: influence and saliency" in html and "Top-1 class match of L2 eps 3 is" in html
    assert (tmp_path / "rep" / "tables" / "class_match_paired.csv").is_file()
    # one colour per source: the class-match lines use the analysis figures' colours
    names = dict(zip(res.sources["source"], res.sources["name"], strict=True))
    fig = class_match_figure(res.explanations, names, list(res.sources["source"]))
    colors = colors_of(res.sources)
    used = {line.get_label(): line.get_color().lower() for line in fig.axes[1].lines
            if not line.get_label().startswith("_")}
    assert used == {"L2 eps 3": colors["l2-eps3"].lower()}


def test_saliency_is_gradient_magnitude_at_input_size(tmp_path):
    out = tmp_path / "sal"
    out.mkdir()
    rng = np.random.default_rng(0)
    grads = {m: rng.normal(size=(4, 3, 28, 28)) for m in ("natural", "l2-eps3")}
    write_npz(out / "gradients.npz", {**grads, "indices": np.arange(4), "labels": np.zeros(4)})
    write_json(out / "summary.json", {"models": ["natural", "l2-eps3"], "dataset": "digits",
                                      "split": "test"})
    folder = read_saliency(out)
    assert folder.magnitude["natural"].shape == (4, 28, 28)
    assert np.allclose(folder.magnitude["l2-eps3"], np.sqrt((grads["l2-eps3"] ** 2).sum(1)))
    assert folder.images.shape == (4, 8, 8) and len(folder.captions) == 4
    runs, epochs = make_study(SyntheticStudy(sources=SOURCES))
    res = analyze(runs, epochs, tmp_path / "rep", saliency=[out])
    assert "why_saliency_0" in res.figures
    fig = saliency_figure(folder, {"natural": "natural", "l2-eps3": "L2 eps 3"},
                          ["natural", "l2-eps3"], "natural")
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(shown) == 4 * 3 and shown[1].shape == (28, 28)  # image + 2 maps per row
    assert shown[1].min() >= 0 and shown[1].max() <= 1
    assert fig.axes[1].images[0].get_cmap().name == "gray"


def test_broken_outputs_are_one_clear_error(tmp_path, capsys):
    from robust_transfer.cli import main

    (tmp_path / "inf" / "natural").mkdir(parents=True)
    (tmp_path / "inf" / "summary.json").write_text("{}")
    (tmp_path / "inf" / "natural" / "influence.npz").write_bytes(b"not an npz")
    runs, _ = make_study(SyntheticStudy(sources=SOURCES))
    csv = tmp_path / "runs.csv"
    runs.drop(columns=["n_label"]).rename(columns={"source_eps": "eps",
                                                   "source_norm": "norm"}).to_csv(csv)
    out = tmp_path / "rep"
    for flag, path in (("--influence", tmp_path / "inf"), ("--saliency", tmp_path / "inf"),
                       ("--influence", tmp_path / "missing")):
        assert main(["analyze", "--csv", str(csv), flag, str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert not out.exists()
