"""Benchmarks of last-layer influence (issues 5 and 13), printed as plain numbers.

The paper's own code path, side by side with ours, is ``bench_influence_paper.py``.

(b) The paper's influence setting, a ResNet-50 head: 2,048 features, 10 classes, 3,200
    training and 10,000 test images (synthetic features): every test-by-train and
    train-by-train score and the self-influence. Ours by default (form ``auto``) against the
    direct form in float64 and in mixed precision (float32 refined to float64); scores
    compared with the direct float64 ones (largest difference over the largest score,
    top-10 of every test row). Targets: <= 20 s and <= 6 GB on the 2-core CPU; refined
    float32 within 1e-8 of the largest score, top-10 identical.
(c) Few images: n = 200, 2,048 features, 1,000 test images: the kernel form (what ``auto``
    picks) against the direct form. Target: >= 10x, same scores.
(d) The matrix-free conjugate-gradient path on the (b) head, 32 test images.
(e) Leave-one-out on a real problem (scikit-learn digits through a fixed random projection
    to 32 features, 300 training images): Pearson and Spearman of predicted and actual
    test-loss changes.

Run (b) first in a fresh process: its peak memory is the process's.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_influence.py [--parts b c d e]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np
import torch

from robust_transfer.influence import (
    InfluenceConfig,
    compute_influence,
    leave_one_out_check,
)

F64 = torch.float64
_RESULTS: dict = {}  # (b)'s result, reused by (d) in the same run


def synthetic(n: int, m: int, d: int, c: int, seed: int, spread: float = 3.0):
    """Non-negative (post-ReLU-like) class-clustered features and a class-mean head."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g, dtype=F64)
    y, yt = torch.arange(n) % c, torch.arange(m) % c
    x = torch.relu(centres[y] + 1.5 * torch.randn(n, d, generator=g, dtype=F64))
    xt = torch.relu(centres[yt] + 1.5 * torch.randn(m, d, generator=g, dtype=F64))
    means = torch.stack([x[y == k].mean(0) for k in range(c)])
    w = means - means.mean(0)
    w *= spread / (x @ w.T).std()  # logits of a few units: neither uniform nor saturated
    b = -(x @ w.T).mean(0)
    return x, y, xt, yt, w, b


# --- (b) a ResNet-50-sized head -----------------------------------------------------------


def timed(fn, repeats: int = 1):
    """``(last result, [seconds of each call])``."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def minmed(times: list[float]) -> str:
    return f"min {min(times):.1f} s, median {statistics.median(times):.1f} s of {len(times)}"


def compare(out, ref) -> str:
    """Largest difference over the largest score, and top-10 agreement per test row."""
    scale = np.abs(ref.scores).max()
    diff = np.abs(out.scores - ref.scores).max() / scale
    top = lambda s: np.argsort(s, axis=1, kind="stable")[:, :10]  # noqa: E731
    same = int((top(out.scores) == top(ref.scores)).all(1).sum())
    train = ""
    if out.train_scores is not None:
        train = f", train-by-train {np.abs(out.train_scores - ref.train_scores).max() / scale:.1e}"
    return f"max |difference| {diff:.1e} of the largest score{train}; top-10 identical in {same:,} of {len(ref.scores):,} test rows"


def part_b(damping: float = 1e-3, repeats: int = 3, n: int = 3200, m: int = 10000,
           direct_repeats: int = 1, d: int = 2048) -> None:
    x, y, xt, yt, w, b = synthetic(n, m, d, 10, seed=1)
    before = _peak_rss()
    cfg = InfluenceConfig(damping=damping)
    res, t_auto = timed(lambda: compute_influence(x, y, xt, yt, w, b, cfg), repeats)
    peak = _peak_rss()
    _RESULTS["b"] = res
    steps = ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items())
    print(f"(b) the paper's setting: {d} features, 10 classes, {n:,} train, {m:,} test, damping "
          f"{damping:g}; test and train targets, self-influence")
    print(f"    ours (form auto -> {res.info['form']}, float64): {minmed(t_auto)} (target <= 20 s); "
          f"peak RSS {peak / 2**30:.2f} GB (before: {before / 2**30:.2f} GB; target <= 6 GB); "
          f"steps [s]: {steps}")
    ref, t_f64 = timed(lambda: compute_influence(
        x, y, xt, yt, w, b, InfluenceConfig(damping=damping, form="direct")), direct_repeats)
    print(f"    direct form, float64: {minmed(t_f64)}; steps [s]: "
          + ", ".join(f"{k} {v:.1f}" for k, v in ref.timings.items()))
    mixed, t_mix = timed(lambda: compute_influence(
        x, y, xt, yt, w, b, InfluenceConfig(damping=damping, form="direct", precision="mixed")), direct_repeats)
    print(f"    direct form, mixed (float32 + float64 refinement, {mixed.info['refine_iterations']} "
          f"steps): {minmed(t_mix)}; steps [s]: " + ", ".join(f"{k} {v:.1f}" for k, v in mixed.timings.items()))
    print(f"    ratios (min): direct float64 / auto {min(t_f64) / min(t_auto):.1f}x, direct float64 / "
          f"mixed {min(t_f64) / min(t_mix):.2f}x")
    print(f"    mixed vs direct float64: {compare(mixed, ref)} (target 1e-8, all)")
    print(f"    {res.info['form']} vs direct float64: {compare(res, ref)}")


def part_small_n(damping: float = 1e-3, repeats: int = 3, direct_repeats: int = 3) -> None:
    x, y, xt, yt, w, b = synthetic(200, 1000, 2048, 10, seed=2)
    res, t_auto = timed(lambda: compute_influence(x, y, xt, yt, w, b, InfluenceConfig(damping=damping)),
                        repeats)
    ref, t_dir = timed(lambda: compute_influence(
        x, y, xt, yt, w, b, InfluenceConfig(damping=damping, form="direct")), direct_repeats)
    print(f"(c) few images: 200 train, 1,000 test, 2048 features, 10 classes, damping {damping:g}")
    print(f"    ours (form auto -> {res.info['form']}): {minmed(t_auto)}; direct form: {minmed(t_dir)}; "
          f"speed-up {min(t_dir) / min(t_auto):.0f}x (median {statistics.median(t_dir) / statistics.median(t_auto):.0f}x; "
          f"target >= 10x)")
    print(f"    {compare(res, ref)}")


def part_c(damping: float = 1e-3, count: int = 32) -> None:
    x, y, xt, yt, w, b = synthetic(3200, count, 2048, 10, seed=1)  # (b)'s first test rows
    if "b" in _RESULTS and _RESULTS["b"].config.damping == damping:
        ref_scores, ref_note = _RESULTS["b"].scores[:count], "the (b) scores"
    else:
        ref = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(damping=damping, train_targets=False))
        ref_scores, ref_note = ref.scores, f"cholesky, test targets only, {ref.timings['total_s']:.1f} s"
    cfg = InfluenceConfig(damping=damping, solver="cg", train_targets=False, cg_tol=1e-8,
                          cg_batch=count)
    res = compute_influence(x, y, xt, yt, w, b, cfg)
    diff = np.abs(res.scores - ref_scores).max() / np.abs(ref_scores).max()
    print(f"(d) conjugate gradients on the (b) head, {count} test images, tolerance {cfg.cg_tol:g}: "
          f"{res.timings['total_s']:.1f} s, {res.info['cg_iterations']} iterations, "
          f"max difference to cholesky {diff:.1e} of the largest score ({ref_note})")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- (d) leave-one-out on real data -----------------------------------------------------


def part_d() -> None:
    from robust_transfer.data import balanced_subset, load_dataset

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    proj = torch.randn(64, 32, generator=torch.Generator().manual_seed(0), dtype=F64) / 8.0
    idx = balanced_subset(train.labels.numpy(), 300, 0, "digits")
    x = (train.images.reshape(len(train), -1).to(F64) / 255.0 @ proj)[idx]
    xt = test.images.reshape(len(test), -1).to(F64) / 255.0 @ proj
    print("(e) leave-one-out, digits (300 train) through a random projection to 32 features; "
          "30 removals per test image")
    for damping in (1e-3, 1e-2):
        for selection in ("top", "random"):
            rows = [leave_one_out_check(x, train.labels[idx], xt, test.labels, 10, damping, t, 30,
                                        selection) for t in range(5)]
            pearson = ", ".join(f"{r.pearson:.4f}" for r in rows)
            spearman = ", ".join(f"{r.spearman:.4f}" for r in rows)
            print(f"    damping {damping:g}, {selection:6s}: Pearson [{pearson}]; "
                  f"Spearman [{spearman}] (test images 0-4)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=list("bcde"), choices=list("bcde"),
                        help="which benchmarks to run (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of (b) and (c)")
    parser.add_argument("--direct-repeats", type=int, default=1,
                        help="(b), (c): timed runs of the (slow) direct forms")
    parser.add_argument("--n", type=int, default=3200, help="(b): training images")
    parser.add_argument("--d", type=int, default=2048, help="(b): features")
    parser.add_argument("--m", type=int, default=10000, help="(b): test images")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    for part in args.parts:
        {"b": lambda: part_b(repeats=args.repeats, n=args.n, m=args.m,
                                  direct_repeats=args.direct_repeats, d=args.d),
         "c": lambda: part_small_n(repeats=args.repeats, direct_repeats=args.direct_repeats), "d": part_c, "e": part_d}[part]()


if __name__ == "__main__":
    main()
