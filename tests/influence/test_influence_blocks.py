"""Influence through the fine-tuned blocks (kronfluence EK-FAC): modules, sign, outputs, CLI."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from robust_transfer.analysis.explain import class_match_figure, load_explanations, read_influence
from robust_transfer.cli import main
from robust_transfer.influence import compute_influence
from robust_transfer.influence.blocks import (
    BlocksConfig,
    NoUnfrozenBlocksError,
    compute_block_influence,
    tracked_modules,
)
from robust_transfer.models.checkpoints import save_model
from robust_transfer.models.finetune import set_unfrozen_blocks


def _unfrozen(model, k):
    model = copy.deepcopy(model)
    set_unfrozen_blocks(model, k)
    return model.eval()


def test_tracked_modules_are_the_head_and_the_unfrozen_blocks(digits_net):
    assert tracked_modules(_unfrozen(digits_net, 1), "head") == ["net.fc"]
    assert tracked_modules(_unfrozen(digits_net, 1)) == [
        "net.layer3.0.conv1", "net.layer3.0.conv2", "net.layer3.0.downsample.0", "net.fc"]
    every = tracked_modules(_unfrozen(digits_net, "all"))
    assert every[0] == "net.conv1" and len(every) == 10
    with pytest.raises(NoUnfrozenBlocksError, match="--through head"):
        tracked_modules(_unfrozen(digits_net, 0))


@pytest.fixture(scope="module")
def block_problem(digits_model, digits_train, digits_test, digits_policy):
    """The trained digits model with its last block unfrozen, 120 train and 40 test images."""
    model = _unfrozen(digits_model, 1)
    x = digits_policy.prepare(digits_train.images[:120])
    xt = digits_policy.prepare(digits_test.images[:40])
    return model, x, digits_train.labels[:120], xt, digits_test.labels[:40]


def test_block_influence_agrees_in_sign_with_exact_and_leaves_the_model(block_problem, tmp_path,
                                                                        monkeypatch):
    model, x, y, xt, yt = block_problem
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    monkeypatch.chdir(tmp_path)
    cfg = BlocksConfig(batch_size=64)
    head = compute_block_influence(model, x, y, xt, yt, cfg, scope="head")
    blocks = compute_block_influence(model, x, y, xt, yt, cfg, scope="blocks")
    assert os.listdir(tmp_path) == []  # kronfluence's folders went to a temporary one
    state = model.state_dict()
    assert all(torch.equal(before[k], state[k]) for k in before)
    assert [p.requires_grad for p in model.parameters()] == grads
    assert type(model.net.fc) is torch.nn.Linear  # kronfluence wrapped a copy, not the model
    with torch.no_grad():
        f, ft = model.features(x).double(), model.features(xt).double()
    exact = compute_influence(f, y, ft, yt, model.head.weight.detach(), model.head.bias.detach())
    for result in (head, blocks):
        assert result.scores.shape == (40, 120) and result.train_scores.shape == (120, 120)
        # a positive semi-definite H^-1: self-influence -g^T H^-1 g is never positive
        assert (result.self_influence <= 1e-6 * np.abs(result.self_influence).max()).all()
        rho = np.mean([spearmanr(a, b)[0] for a, b in zip(exact.scores, result.scores, strict=True)])
        assert rho > 0.2, rho  # the same sign convention: helpful is negative in both
    assert blocks.info["parameters"] > 10 * head.info["parameters"]


@pytest.fixture(scope="module")
def finetuned_checkpoints(tmp_path_factory, digits_net):
    """Checkpoints as ``finetune --out`` records them: last block unfrozen, and head only."""
    root = tmp_path_factory.mktemp("ft")
    meta = {"training": "finetune", "target": "digits", "seed": 0, "n": 60, "n_requested": "60"}
    return {k: save_model(digits_net, root / f"u{k}", {**meta, "unfrozen_blocks": str(k)})
            for k in (0, 1)}


def test_influence_through_blocks_writes_both_scopes_side_by_side(tmp_path, finetuned_checkpoints,
                                                                  capsys):
    out = tmp_path / "inf"
    code = main(["influence", "-c", f"natural={finetuned_checkpoints[1]}", "--test-n", "20",
                 "--max-rank", "10", "--grid", "2", "3", "--through", "blocks", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "natural (blocks): solver kronfluence-ekfac, damping heuristic" in stdout
    for name in ("class_match_scopes.png", "influence_grid_scopes.png", "blocks/class_match.png",
                 "natural/influence.npz", "blocks/natural/influence.npz"):
        assert (out / name).is_file(), name
    assert json.loads((out / "blocks" / "summary.json").read_text())["scope"] == "blocks"
    assert read_influence(out).scope == "head" and read_influence(out / "blocks").scope == "blocks"
    exp = load_explanations([out, out / "blocks"], [], "natural")
    assert [f.scope for f in exp.influence] == ["head", "blocks"]
    figure = class_match_figure(exp, {}, ["natural"])  # the report's: scopes side by side
    titles = [ax.get_title() for ax in figure.axes]
    assert len(titles) == 4 and titles[0].startswith("last layer: ")
    assert titles[2].startswith("through the fine-tuned blocks: ")


def test_through_blocks_refuses_a_head_only_checkpoint(tmp_path, finetuned_checkpoints, capsys):
    code = main(["influence", "-c", str(finetuned_checkpoints[0]), "--through", "blocks",
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "trained its head only" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
