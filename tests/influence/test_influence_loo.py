"""Influence predicts leave-one-out retraining on a real problem (Koh & Liang's check).

The problem: scikit-learn's digits (real images), 300 class-balanced training images,
pixels through a fixed random projection to 32 features, a 10-class softmax head fitted to
the optimum of the L2-regularised loss (lambda = the default damping, 1e-3). For the first
test image, the 30 training images with the largest predicted effect (Koh & Liang's
choice) are removed one at a time and the head refitted by Newton's method.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust_transfer.data import balanced_subset
from robust_transfer.errors import ConfigError
from robust_transfer.influence import InfluenceConfig, fit_head, leave_one_out_check


def projected_digits(data, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(64, dim, generator=g, dtype=torch.float64) / 8.0
    return (data.images.reshape(len(data), -1).to(torch.float64) / 255.0) @ proj


def test_fit_head_reaches_the_regularised_optimum(digits_train):
    idx = balanced_subset(digits_train.labels.numpy(), 200, 0, "digits")
    x, y = projected_digits(digits_train)[idx], digits_train.labels[idx]
    w, b, info = fit_head(x, y, 10, damping=1e-3)
    assert info["grad_max"] < 1e-10
    # removing nothing from a warm start changes nothing
    w2, b2, _ = fit_head(x, y, 10, 1e-3, w, b, torch.ones(len(y), dtype=torch.float64))
    assert torch.allclose(w, w2, atol=1e-12) and torch.allclose(b, b2, atol=1e-12)
    with pytest.raises(ConfigError, match="starting weight needs its bias"):
        fit_head(x, y, 10, 1e-3, w)


def test_leave_one_out_correlates_with_influence(digits_train, digits_test):
    idx = balanced_subset(digits_train.labels.numpy(), 300, 0, "digits")
    x, y = projected_digits(digits_train)[idx], digits_train.labels[idx]
    xt, yt = projected_digits(digits_test), digits_test.labels
    res = leave_one_out_check(x, y, xt, yt, 10, damping=InfluenceConfig().damping,
                              test_index=0, num_removed=30, selection="top")
    assert res.max_grad < 1e-9  # the refits converged
    assert np.sign(res.predicted).tolist() == np.sign(res.actual).tolist()
    assert res.pearson >= 0.95, f"Pearson {res.pearson:.4f}, Spearman {res.spearman:.4f}"
