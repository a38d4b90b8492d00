"""How close K-FAC and EK-FAC influence come to exact influence, on real features (issue 19).

The embedded zoo's Fashion-MNIST sources (``fmnist-natural``, ``fmnist-l2-eps1``), frozen;
their pooled features (64) of a target's training images; a head fitted to convergence on
them (``fit_head``: the convex head-only fine-tune, L2 = the damping); then exact
last-layer influence (``form auto``: an exact form) against ``kfac``, ``ekfac`` and, for
scale, the identity in place of the Hessian (plain gradient dot products). Targets:
digits (all 1,348 training images, all 449 test images) and Fashion-MNIST (n = 1,000 and
10,000 training images, 1,000 test images). Per method:

* Spearman: the rank correlation of a test image's scores with the exact ones over all
  training images, averaged over test images (and its 10th percentile);
* top-10: the share of the exact 10 most helpful training images the method also ranks
  in its top 10, averaged over test images;
* curve: the largest difference over ranks 1..100 of the test class-match curve (share
  of test images whose k-th most helpful training image has their class), in points.

    python benchmarks/bench_influence_fidelity.py [--targets digits fmnist] [--n 1000 10000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from scipy.stats import rankdata

from robust_transfer.data import balanced_subset, load_dataset
from robust_transfer.influence import InfluenceConfig, compute_influence, extract_features, fit_head
from robust_transfer.influence.analysis import class_match_curve, rank_training
from robust_transfer.influence.hessian import augment, head_probs, residuals
from robust_transfer.models.checkpoints import load_model
from robust_transfer.models.zoo import fetch

SOURCES = ("fmnist-natural", "fmnist-l2-eps1")
DAMPING = 1e-3
TEST_N = 1000


def row_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``a`` with the same row of ``b``."""
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    return (ra * rb).sum(1) / np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))


def top_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> np.ndarray:
    ta, tb = rank_training(a, k), rank_training(b, k)
    return np.array([len(set(x) & set(y)) / k for x, y in zip(ta, tb, strict=True)])


def identity_scores(x, y, xt, yt, w, b) -> np.ndarray:
    """``-g_t . g_i`` (no Hessian): ``-(r_t . r_i)(x~_t . x~_i)``."""
    r, rt = residuals(x, y, w, b, reduced=True), residuals(xt, yt, w, b, reduced=True)
    return (-(rt @ r.T) * (augment(xt) @ augment(x).T)).numpy()


def compare(name: str, scores: np.ndarray, exact: np.ndarray, yt, y, seconds: float) -> str:
    rho = row_spearman(scores, exact)
    top = top_overlap(scores, exact)
    curve = class_match_curve(scores, yt, y, 100).share
    ref = class_match_curve(exact, yt, y, 100).share
    return (f"    {name:<8} Spearman mean {rho.mean():.3f} (10th pct {np.percentile(rho, 10):.3f}), "
            f"top-10 overlap {top.mean():.1%}, curve max diff {100 * np.abs(curve - ref).max():.1f} pts "
            f"(top-1 {100 * curve[0]:.1f}% vs exact {100 * ref[0]:.1f}%), {seconds:.2f} s")


def features(source: str, target: str, n: int | None):
    model, _ = load_model(fetch(source))
    model.eval()
    from robust_transfer.data import InputPolicy

    policy = InputPolicy(channels=model.channels, size=model.input_size, augment=False)
    train, test = load_dataset(target, "train"), load_dataset(target, "test")
    tr = train.subset(balanced_subset(train.labels.numpy(), n, 0, target))
    te = test.subset(balanced_subset(test.labels.numpy(), min(TEST_N, len(test)), 0, f"{target}:test"))
    x, xt = extract_features(model, tr.images, policy), extract_features(model, te.images, policy)
    return x, tr.labels, xt, te.labels, model.head.out_features


def run(source: str, target: str, n: int | None) -> None:
    x, y, xt, yt, c = features(source, target, n)
    w, b, _ = fit_head(x, y, c, DAMPING)
    acc = float((head_probs(xt, w, b).argmax(1) == yt).double().mean())
    print(f"  {target} n={len(y):,} test={len(yt):,} source {source}: head test accuracy {acc:.1%}")
    t0 = time.perf_counter()
    exact = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(damping=DAMPING, train_targets=False))
    t_exact = time.perf_counter() - t0
    print(f"    exact    form {exact.info['form']}, {t_exact:.2f} s")
    for form in ("kfac", "ekfac"):
        t0 = time.perf_counter()
        approx = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(
            damping=DAMPING, form=form, train_targets=False))
        print(compare(form, approx.scores, exact.scores, yt.numpy(), y.numpy(), time.perf_counter() - t0))
    t0 = time.perf_counter()
    ident = identity_scores(x, y, xt, yt, w, b)
    print(compare("identity", ident, exact.scores, yt.numpy(), y.numpy(), time.perf_counter() - t0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["digits", "fmnist"])
    parser.add_argument("--n", nargs="+", type=int, default=[1000, 10000], help="fmnist training images")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}; damping {DAMPING:g}")
    for target in args.targets:
        for n in ([None] if target == "digits" else args.n):
            for source in SOURCES:
                run(source, target, n)


if __name__ == "__main__":
    main()
