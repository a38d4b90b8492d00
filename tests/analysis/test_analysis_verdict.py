"""The verdict: the heatmap per target and the two sentences, on studies with known answers."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle
from synthetic_study import SyntheticSource, SyntheticStudy, make_study

from robust_transfer.analysis import CIOptions, verdict_sentences
from robust_transfer.analysis.report import compute
from robust_transfer.analysis.verdict import early_epoch, verdict_figure

SOURCES = {"natural": SyntheticSource(), "l2-eps3": SyntheticSource(3.0, "l2", 3.0, 2.0),
           "linf-eps4": SyntheticSource(4 / 255, "linf", 2.0, 1.5)}


def _mixed() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Robust sources ahead with the head only, the natural one ahead with 3 blocks."""
    runs, epochs = make_study(SyntheticStudy(sources=SOURCES, run_noise=0.002))
    behind = (runs["source"] != "natural") & (runs["unfrozen_blocks"] == "3")
    runs.loc[behind, "test_acc"] -= 0.2
    return runs, epochs[~epochs["run_id"].isin(runs.loc[behind, "run_id"])]


def test_sentences_cover_every_setting_and_say_where_natural_wins():
    runs, epochs = _mixed()
    res = compute(runs, epochs, None, CIOptions())
    few_images, few_epochs = verdict_sentences(res)
    assert (few_images, few_epochs) == res.sentences
    assert few_images.startswith("few images: with the head only, a robust source is clearly "
                                 "ahead in 10 of 10 cells (largest: L2 eps 3, ")
    assert ("with the last 3 blocks unfrozen, the natural source is clearly ahead in 10 of 10 "
            "cells" in few_images)
    assert "n = 100-1600, 8 epochs, 3 seeds per cell" in few_images
    assert few_epochs.startswith("few epochs: with the head only, after 2 epochs every robust "
                                 "source is clearly ahead")
    assert re.search(r"L2 eps 3 needs \d\.\dx fewer epochs \(95% CI", few_epochs)
    assert "(n = 1600, 8-epoch runs, 3 seeds per cell)" in few_epochs


def test_one_seed_and_missing_epoch_curves_are_said():
    runs, _ = make_study(SyntheticStudy(sources=SOURCES, seeds=(0,)))
    res = compute(runs, None, None, CIOptions())
    assert ("with the head only, every cell has one seed, so no interval: robust minus natural "
            "is +") in res.sentences[0]
    assert "1 seed per cell" in res.sentences[0]
    assert res.sentences[1].startswith("few epochs: not measured (the runs have no per-epoch")


def test_epoch_n_defaults_to_the_largest_with_two_seeds():
    runs, epochs = make_study(SyntheticStudy(sources=SOURCES))
    drop = (runs["n"] == 1600) & (runs["seed"] > 0)
    res = compute(runs[~drop], epochs, None, CIOptions())
    assert res.view.n_label == {"digits": "800"}
    assert "(n = 800, 8-epoch runs" in res.sentences[1]


def test_heatmap_values_and_outlines_match_the_cells():
    runs, epochs = _mixed()
    res = compute(runs, epochs, None, CIOptions())
    cells = res.verdict_cells
    fig = verdict_figure(cells, "digits", res.sources, res.view.epochs)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["L2 eps 3", "Linf eps 4/255"]
    for ax, source in zip(panels, ["l2-eps3", "linf-eps4"], strict=True):
        part = cells[cells["source"] == source]
        texts = sorted(float(t.get_text()) for t in ax.texts)
        assert texts == pytest.approx(sorted(np.round(100 * part["mean"], 1)))
        outlined = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
        assert len(outlined) == int(part["verdict"].isin(["better", "worse"]).sum()) == 10
        grid = ax.images[0].get_array()
        assert grid.shape == (2, 5)  # unfrozen settings x n
        assert (grid[0] > 0).all() and (grid[1] < 0).all()  # head only row blue, 3 blocks red
        assert ax.images[0].get_cmap().name == "RdBu"
        low, high = ax.images[0].get_clim()
        assert low == -high  # diverging around 0


def test_early_epoch_is_near_a_fifth_of_the_budget():
    assert early_epoch("15", list(range(1, 16))) == 3
    assert early_epoch("100", [1, 10, 20, 50, 100]) == 20
    assert early_epoch("8", [2, 4, 8]) == 2
