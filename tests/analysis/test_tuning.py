"""Learning rates chosen on validation, and robust-minus-natural deltas at each source's own rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from robust_transfer.analysis.tuning import (
    choose_lr,
    select_epochs_on_validation,
    tuned_deltas,
    tuning_sentences,
)
from robust_transfer.errors import ConfigError


def _runs() -> pd.DataFrame:
    """natural is best at lr 0.01, robust at lr 0.1 (by validation); test follows validation."""
    rows = []
    val = {("natural", 0.01): 0.80, ("natural", 0.1): 0.60,
           ("robust", 0.01): 0.70, ("robust", 0.1): 0.75}
    for (source, lr), v in val.items():
        for seed in range(3):
            rows.append({"source": source, "target": "digits", "n": 100, "unfrozen_blocks": "0",
                         "seed": seed, "lr": lr, "val_acc": v + 0.01 * seed,
                         "test_acc": v + 0.02 + 0.01 * seed + (0.005 if seed == 1 else 0)})
    return pd.DataFrame(rows)


def test_rates_are_chosen_on_validation_not_test():
    runs = _runs()
    runs.loc[(runs.source == "natural") & (runs.lr == 0.1), "test_acc"] = 0.99  # test would pick 0.1
    chosen = choose_lr(runs).set_index("source")
    assert chosen.loc["natural", "lr"] == 0.01 and chosen.loc["robust", "lr"] == 0.1
    assert (chosen["rates_tried"] == 2).all()


def test_tuned_and_shared_deltas_are_paired_by_seed():
    d = tuned_deltas(_runs()).iloc[0]
    # shared rate 0.1: robust 0.75+ vs natural 0.60+ -> +0.15 for every seed
    assert d.shared_delta == pytest.approx(0.15) and d.shared_lo == pytest.approx(0.15)
    # each at its own rate: robust 0.75 vs natural 0.80 -> -0.05
    assert d.tuned_delta == pytest.approx(-0.05)
    assert (d.lr, d.baseline_lr, d.seeds) == (0.1, 0.01, 3)
    text = tuning_sentences(tuned_deltas(_runs()))[0]
    assert "robust ahead at lr 0.1" in text and "natural ahead after tuning" in text


def test_without_validation_it_refuses():
    runs = _runs().assign(val_acc=np.nan)
    with pytest.raises(ConfigError, match="val_images"):
        choose_lr(runs)
    with pytest.raises(ConfigError, match="baseline source 'nat'"):
        tuned_deltas(_runs(), baseline="nat")


def test_epoch_chosen_on_validation():
    epochs = pd.DataFrame({"run_id": ["a"] * 3 + ["b"] * 2, "epoch": [1, 2, 3, 1, 2],
                           "val_acc": [0.5, 0.7, 0.7, 0.9, 0.1], "test_acc": [0.4, 0.6, 0.9, 0.8, 0.2]})
    best = select_epochs_on_validation(epochs).set_index("run_id")
    assert best.loc["a", "epoch"] == 2 and best.loc["b", "epoch"] == 1  # ties: the earliest


def test_robustness_table_and_figure():
    from robust_transfer.analysis.robustness import robustness_figure, robustness_table

    runs = _runs().assign(source_eps=lambda f: np.where(f.source == "natural", 0.0, 1.0),
                          source_norm=lambda f: np.where(f.source == "natural", "none", "l2"),
                          robust_acc=lambda f: np.where(f.source == "natural", 0.0, 0.3))
    table = robustness_table(runs)
    assert len(table) == 4 and (table["seeds"] == 3).all()
    rob = table[table.source == "robust"]
    assert np.allclose(rob["robust"], 0.3) and np.allclose(rob["robust_lo"], 0.3)
    assert robustness_figure(table, "digits") is not None
    assert robustness_figure(table, "cifar10") is None
    assert robustness_table(runs.drop(columns="robust_acc")).empty
