"""recommend: head-only probes on a held-out validation set rank the sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust_transfer.data import load_dataset
from robust_transfer.data.subsets import balanced_subset, split_validation
from robust_transfer.errors import ConfigError
from robust_transfer.recommend import recommend


def test_validation_is_balanced_disjoint_and_source_independent():
    labels = load_dataset("digits", "train").labels.numpy()
    pool, val = split_validation(labels, 200, "digits")
    assert len(val) == 200 and len(np.intersect1d(pool, val)) == 0
    assert len(pool) + len(val) == len(labels)
    counts = np.bincount(labels[val], minlength=10)
    assert counts.min() == 20 and counts.max() == 20  # balanced
    again, val2 = split_validation(labels, 200, "digits")
    assert np.array_equal(val, val2) and np.array_equal(pool, again)
    for seed in range(3):  # training subsets drawn from the pool never touch validation
        idx = pool[balanced_subset(labels[pool], 100, seed, "digits")]
        assert len(np.intersect1d(idx, val)) == 0


def test_bad_validation_sizes_are_refused():
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(ConfigError, match="validation set of 5 images"):
        split_validation(labels, 5)
    with pytest.raises(ConfigError, match="does not fit"):
        split_validation(labels, 100)


def test_recommend_ranks_embedded_sources_on_digits():
    rec = recommend("digits", 50, ["fmnist-natural", "fmnist-l2-eps1"], seeds=(0, 1))
    assert {s.name for s in rec.scores} == {"fmnist-natural", "fmnist-l2-eps1"}
    means = [s.mean for s in rec.scores]
    assert means == sorted(means, reverse=True)  # best first
    assert all(0.1 < m <= 1.0 for m in means)  # far above chance (10 classes)
    assert rec.best.gap == 0 and rec.scores[1].gap <= 0
    assert rec.val_images == min(1000, 1348 // 4)
    assert rec.best.name in rec.verdict()


def test_no_source_can_take_large_images():
    from robust_transfer.data.datasets import DatasetInfo, ImageArrays

    info = DatasetInfo("large", tuple(str(c) for c in range(10)), 3, 128)
    imgs = torch.randint(0, 255, (100, 3, 128, 128), dtype=torch.uint8)
    data = ImageArrays(imgs, torch.arange(100) % 10, info, "train")
    with pytest.raises(ConfigError, match="no source can take large: fmnist-natural: it takes 28 px"):
        recommend(data, 20, ["fmnist-natural"], seeds=(0,), val_images=20)


def test_no_sources_at_all(monkeypatch):
    import robust_transfer.models.zoo as zoo

    monkeypatch.setattr(zoo, "zoo_listing", lambda: [])
    with pytest.raises(ConfigError, match="no source models are available"):
        recommend("digits", 50, seeds=(0,))


def test_recommend_refuses_impossible_n():
    with pytest.raises(ConfigError, match="does not fit beside the 300 validation images held out"):
        recommend("digits", 1300, ["fmnist-natural"], seeds=(0,), val_images=300)
    with pytest.raises(ConfigError, match="fewer than"):
        recommend("digits", 5, ["fmnist-natural"], seeds=(0,))


def test_recommend_refuses_a_one_class_target():
    from dataclasses import replace

    digits = load_dataset("digits", "train")
    keep = digits.labels == 3
    one = replace(digits, images=digits.images[keep], labels=digits.labels[keep])
    with pytest.raises(ConfigError, match="one class only"):
        recommend(one, 20, ["fmnist-natural"], seeds=(0,))
