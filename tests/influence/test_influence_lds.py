"""The linear datamodeling score: exact on a linear datamodel, subsets, margins, a real run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust_transfer.cli import main
from robust_transfer.engine.transfer import Recipe
from robust_transfer.errors import ConfigError
from robust_transfer.influence.lds import (
    LDSConfig,
    lds_for_run,
    linear_datamodeling_score,
    margins,
    subset_masks,
)
from robust_transfer.models.sources import load_source
from robust_transfer.study.spec import RunConfig, expand, load_spec


def test_lds_is_one_for_a_linear_datamodel_and_minus_one_reversed():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 30))  # I(train i, test t): negative = helpful
    masks = subset_masks(30, 40, 0.5, seed=1)
    actual = -(masks @ scores.T) * np.array([1, 2, 3, 4, 5, 6]) + 7  # any positive scale
    assert linear_datamodeling_score(scores, masks, actual).mean == pytest.approx(1.0)
    reverse = linear_datamodeling_score(-scores, masks, actual)
    assert reverse.mean == pytest.approx(-1.0) and reverse.n_test == 6
    noisy = linear_datamodeling_score(scores, masks, actual + rng.normal(0, 3, actual.shape))
    assert 0.2 < noisy.mean < 0.99 and noisy.low < noisy.mean < noisy.high


def test_subsets_have_the_fraction_and_bad_fractions_are_refused():
    masks = subset_masks(10, 50, 0.3, seed=0)
    assert masks.shape == (50, 10) and (masks.sum(1) == 3).all()
    assert len({m.tobytes() for m in masks}) > 20
    for bad in (0, 1, 1.5, -0.2):
        with pytest.raises(ConfigError, match=r"fraction must lie in \(0, 1\)"):
            LDSConfig(fraction=bad)


def test_margin_is_true_logit_minus_logsumexp_of_the_others():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    expected = [2.0 - np.log(np.exp(0.0) + np.exp(-1.0)), 3.0 - np.log(2 * np.exp(0.5))]
    assert margins(logits, torch.tensor([0, 2])) == pytest.approx(expected)


def test_lds_on_a_real_last_block_run_is_positive_for_every_method():
    run = RunConfig("natural", "fmnist-natural", "digits", 40, 1, 4, 0,
                    Recipe(lr=0.1, batch_size=32))
    out = lds_for_run(run, load_source("fmnist-natural"), ["exact-head", "ekfac-blocks"],
                      LDSConfig(subsets=8, test_n=60))
    assert set(out.results) == {"exact-head", "ekfac-blocks"}
    for res in out.results.values():
        assert res.n_subsets == 8 and res.n_test > 50
        assert 0 < res.mean <= 1 and res.low < res.mean < res.high


SPEC = """\
name: lds-tiny
sources: [{model: fmnist-natural, label: natural}]
targets: [digits]
train_images: [20]
unfrozen_blocks: [0]
epochs: 2
seeds: [0]
"""


def test_lds_command_prints_and_writes_the_table(tmp_path, capsys):
    import json

    from robust_transfer.study import run_study
    from robust_transfer.study.store import RunOutcome

    (tmp_path / "spec.yaml").write_text(SPEC)
    run_study(tmp_path / "spec.yaml", tmp_path / "study", run_fn=lambda task, ctx: RunOutcome(
        task.run_id, "finished", 0.0, 1.0, n=20, history=({"epoch": 2, "test_acc": 0.5},)))
    rid = expand(load_spec(tmp_path / "spec.yaml"))[0].run_id
    code = main(["lds", "--study", str(tmp_path / "study"), "--run", rid[:8], "--subsets", "4",
                 "--test-n", "30", "--method", "exact-head", "--method", "ekfac-blocks",
                 "--out", str(tmp_path / "lds")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "exact-head: LDS" in out and "ekfac-blocks: skipped (head-only run" in out
    rows = json.loads((tmp_path / "lds" / "summary.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["exact-head", "ekfac-blocks"] and rows[0]["subsets"] == 4


def test_the_cli_restates_the_lds_defaults():
    from robust_transfer.cli import lds as cli
    from robust_transfer.influence.lds import LDSConfig

    d = LDSConfig()
    assert (cli.DEFAULT_SUBSETS, cli.DEFAULT_FRACTION, cli.DEFAULT_SEED) == (d.subsets, d.fraction, d.seed)
