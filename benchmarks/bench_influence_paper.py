"""The paper's influence code path, re-expressed on precomputed features, beside ours (issue 13).

Re-expressed (not copied) from utrerf/robust_transfer_learning, ``influence_functions/``
with the defaults of ``tools/helpers.get_runtime_inputs_for_influence_functions``
(``-n 3200`` images, ``-b 1`` batch size):

* ``hessian.py``: for each batch of ONE image, the float32 head's loss cast to float64,
  its gradient with ``create_graph=True``, then ``helpers.eval_hessian``: a fresh
  ``zeros(l, l)`` float64 matrix filled by one ``autograd.grad`` call per row
  (``l = C (d + 1)`` = 20,490 for 2,048 features and 10 classes), returned as numpy and
  added to the running sum ``H``; then ``pinv2(H, rcond=5e-2)``, here
  ``scipy.linalg.pinv(H, atol=0, rtol=5e-2)`` (the same cut: singular values below 5e-2 of
  the largest are dropped).
* ``make_grads.py``: one image at a time (``batch_size = 1``), the float64 gradient.
* ``make_influences.py``: ``test_gradients @ H_inv @ train_gradients.T``.

The features stand in for the frozen ResNet-50 (precomputed: the paper's forward passes
are not counted, which flatters the paper's path). At 64 features and 500 training images
the whole path is run and timed; at the paper's setting (2,048 features, 10 classes, 3,200
training and 10,000 test images) it would take many hours, so fractions are timed and
extrapolated: Hessian rows (linear in rows and images), the per-image matrix work (linear
in rows), the pseudo-inverse (an SVD, cubic in the size: timed at a smaller size), the
per-image gradients (linear in images) and the final products (linear in test images and
in columns). Every printed number says whether it was timed or extrapolated.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_influence_paper.py [--parts small paper]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import autograd

sys.path.insert(0, str(Path(__file__).parent))
from bench_influence import synthetic, timed  # noqa: E402

from robust_transfer.influence import (  # noqa: E402
    InfluenceConfig,
    compute_influence,
)
from robust_transfer.influence.hessian import augment, head_probs, hessian_from_probs  # noqa: E402

RCOND = 5e-2


# --- the paper's path, on features ------------------------------------------------------


def paper_head(weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Linear:
    """The fine-tuned model's ``fc`` layer: float32, as the paper's model."""
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.double().contiguous().view(-1) for g in grads])


def paper_batch_hessian(layer: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor,
                        rows: int | None = None) -> np.ndarray:
    """One batch of ``hessian.py``: loss in float64, then ``eval_hessian`` row by row.

    ``rows`` stops after that many rows (for timing a fraction); the matrix is still
    allocated whole, as the paper's.
    """
    loss = torch.nn.functional.cross_entropy(layer(x), y).double()
    g_vector = _flat(autograd.grad(loss, layer.parameters(), create_graph=True))
    size = g_vector.numel()
    hessian = torch.zeros(size, size, dtype=torch.float64)
    for idx in range(size if rows is None else rows):
        hessian[idx] = _flat(autograd.grad(g_vector[idx], layer.parameters(), retain_graph=True))
    return hessian.numpy()


def paper_hessian(layer: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor,
                  batch_size: int = 1) -> np.ndarray:
    """``hessian.py``'s loop: batch Hessians of batch-mean losses, summed."""
    total = None
    for s in range(0, len(x), batch_size):
        h_i = paper_batch_hessian(layer, x[s:s + batch_size], y[s:s + batch_size])
        if total is None:
            total = h_i
        else:
            total += h_i
    return total


def paper_pinv(hessian: np.ndarray) -> np.ndarray:
    """``pinv2(H, rcond=5e-2)``: SVD, singular values below 5e-2 of the largest dropped."""
    return scipy.linalg.pinv(hessian, atol=0.0, rtol=RCOND)


def paper_grads(layer: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``make_grads.py``: one image at a time, flattened to float64, stacked."""
    rows = []
    for i in range(len(x)):
        loss = torch.nn.functional.cross_entropy(layer(x[i:i + 1]), y[i:i + 1])
        rows.append(_flat(autograd.grad(loss.double(), layer.parameters())).numpy())
    return np.vstack(rows)


def paper_influences(test_g: np.ndarray, h_inv: np.ndarray, train_g: np.ndarray) -> np.ndarray:
    """``make_influences.py``."""
    return test_g @ h_inv @ train_g.T


# --- helpers --------------------------------------------------------------------------


def fmt(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.3g} s"


def minmed(times: list[float]) -> str:
    return f"min {fmt(min(times))}, median {fmt(statistics.median(times))} of {len(times)}"


def our_hessian_seconds(x, w, b, repeats: int = 3) -> list[float]:
    """Our closed-form Hessian of the same object: full coordinates, float64, both triangles."""
    xa, probs = augment(x), head_probs(x, w, b)
    return timed(lambda: hessian_from_probs(xa, probs, reduced=False), repeats)[1]


# --- (small) everything run whole ---------------------------------------------------------


def part_small(n: int = 500, m: int = 100, d: int = 64, c: int = 10) -> None:
    x, y, xt, yt, w, b = synthetic(n, m, d, c, seed=0)
    layer = paper_head(w.float(), b.float())
    xf, xtf = x.float(), xt.float()
    print(f"[small] {d} features, {c} classes, {n} train, {m} test; the paper's path run whole "
          f"(all TIMED), {torch.get_num_threads()} threads")
    h, t_h = timed(lambda: paper_hessian(layer, xf, y))
    h_inv, t_p = timed(lambda: paper_pinv(h))
    g_train, t_gtr = timed(lambda: paper_grads(layer, xf, y))
    g_test, t_gte = timed(lambda: paper_grads(layer, xtf, yt))
    paper, t_s = timed(lambda: paper_influences(g_test, h_inv, g_train))
    total = t_h[0] + t_p[0] + t_gtr[0] + t_gte[0] + t_s[0]
    print(f"  paper: Hessian {fmt(t_h[0])} ({n} batches of 1 x {h.shape[0]:,} autograd rows), "
          f"pinv {fmt(t_p[0])}, gradients {fmt(t_gtr[0] + t_gte[0])}, products {fmt(t_s[0])}; "
          f"total {fmt(total)}")
    est = _extrapolated_small(layer, xf, y, xtf, yt, h.shape[0])
    print(f"  the extrapolation method on this size (as used at the paper's setting): "
          f"{fmt(est)} vs {fmt(total)} timed")
    # same scores as our pinv solver: ours = -g^T pinv(H_mean) g, the paper's H is n H_mean
    ours_pinv = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(
        damping=0.0, solver="pinv", rcond=RCOND, train_targets=False))
    diff = np.abs(-paper * n - ours_pinv.scores).max() / np.abs(ours_pinv.scores).max()
    print(f"  paper's scores x (-n) vs our solver 'pinv' (rcond {RCOND:g}, damping 0): max difference "
          f"{diff:.1e} of the largest score (float32 head: expect ~1e-6); kept "
          f"{ours_pinv.info['kept_eigenvalues']} of {ours_pinv.info['dimension']} eigenvalues")
    cfg = InfluenceConfig()  # our default: cholesky, damping 1e-3, form auto, train targets too
    res, t_ours = timed(lambda: compute_influence(x, y, xt, yt, w, b, cfg), 3)
    t_oh = our_hessian_seconds(x, w, b)
    print(f"  ours (default: {res.info['form']} form, damping {cfg.damping:g}, test AND train "
          f"targets): {minmed(t_ours)}; our Hessian of the same matrix: {minmed(t_oh)}")
    print(f"  speed-up: total {total / min(t_ours):,.0f}x (median {total / statistics.median(t_ours):,.0f}x), "
          f"Hessian {t_h[0] / min(t_oh):,.0f}x (median {t_h[0] / statistics.median(t_oh):,.0f}x)")


def _extrapolated_small(layer, x, y, xt, yt, size: int) -> float:
    rows = max(1, size // 10)
    per_image = _hessian_image_seconds(layer, x, y, rows, images=3, size=size)
    return (per_image * len(x) + _pinv_seconds(size, size) + _grad_seconds(layer, x, y, len(x) + len(xt))
            + 2 * len(xt) * size * (size + len(x)) / _gemm_rate(size))


# --- (paper) fractions timed, the rest extrapolated -----------------------------------------


def _hessian_image_seconds(layer, x, y, rows: int, images: int, size: int) -> float:
    """Seconds per image of ``hessian.py``: ``rows`` autograd rows timed, scaled to all rows,
    plus the per-image ``H += H_i`` timed on a slab of rows and scaled."""
    per_row = []
    paper_batch_hessian(layer, x[-1:], y[-1:], rows=min(rows, 50))  # warm-up, not timed
    for i in range(images):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(layer(x[i:i + 1]), y[i:i + 1]).double()
        g_vector = _flat(autograd.grad(loss, layer.parameters(), create_graph=True))
        setup = time.perf_counter() - t0
        buf = torch.zeros(rows, size, dtype=torch.float64)  # fresh pages, as zeros(l, l)
        t0 = time.perf_counter()
        for idx in range(rows):
            buf[idx] = _flat(autograd.grad(g_vector[idx], layer.parameters(), retain_graph=True))
        per_row.append((time.perf_counter() - t0) / rows)
    slab = min(size, 2048)
    acc, part = np.ones((slab, size)), np.ones((slab, size))
    _, t_add = timed(lambda: np.add(acc, part, out=acc), 3)
    return setup + statistics.median(per_row) * size + min(t_add) * size / slab


def _pinv_seconds(size: int, timed_size: int) -> float:
    """``pinv`` timed at ``timed_size`` and scaled by ``(size / timed_size)^3``."""
    a = np.random.default_rng(0).normal(size=(timed_size, timed_size))
    a = a @ a.T
    _, t = timed(lambda: paper_pinv(a))
    return t[0] * (size / timed_size) ** 3


def _grad_seconds(layer, x, y, count: int, sample: int = 300) -> float:
    k = min(sample, len(x))
    _, t = timed(lambda: paper_grads(layer, x[:k], y[:k]))
    return t[0] / k * count


def _gemm_rate(size: int) -> float:
    """float64 flop/s of numpy's matrix product at this width (the products' rate)."""
    a = np.random.default_rng(0).normal(size=(256, size))
    b = np.random.default_rng(1).normal(size=(size, min(size, 2048)))
    _, t = timed(lambda: a @ b, 3)
    return 2 * 256 * size * b.shape[1] / min(t)


def part_paper(n: int = 3200, m: int = 10000, d: int = 2048, c: int = 10,
               rows: int = 2000, images: int = 3, pinv_size: int = 2048) -> None:
    x, y, xt, yt, w, b = synthetic(n, m, d, c, seed=1)
    layer = paper_head(w.float(), b.float())
    size = c * (d + 1)
    print(f"[paper] {d} features, {c} classes, {n} train, {m} test (the paper's setting); "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    per_image = _hessian_image_seconds(layer, x.float(), y, rows, images, size)
    t_hess = per_image * n
    print(f"  paper Hessian: TIMED {rows} of {size:,} autograd rows on each of {images} images and "
          f"H += H_i on a {min(size, 2048)}-row slab; EXTRAPOLATED to {size:,} rows x {n:,} images "
          f"= {size * n:,} autograd calls: {fmt(per_image)} per image, {fmt(t_hess)} in all")
    t_pinv = _pinv_seconds(size, pinv_size)
    print(f"  paper pinv: TIMED on a {pinv_size:,}-square matrix, EXTRAPOLATED by the cube of the "
          f"size to {size:,}: {fmt(t_pinv)}")
    t_grads = _grad_seconds(layer, x.float(), y, n + m)
    print(f"  paper gradients: TIMED 300 images one at a time, EXTRAPOLATED to {n + m:,}: {fmt(t_grads)}")
    flops = 2 * m * size * size + 2 * m * size * n
    t_prod = flops / _gemm_rate(size)
    print(f"  paper products test_g @ H_inv @ train_g.T ({flops / 1e12:.1f} TFLOP): numpy's rate "
          f"TIMED on 256 x {size:,} x 2,048, EXTRAPOLATED: {fmt(t_prod)}")
    total = t_hess + t_pinv + t_grads + t_prod
    print(f"  paper total, EXTRAPOLATED: {fmt(total)}")
    cfg = InfluenceConfig()
    res, t_ours = timed(lambda: compute_influence(x, y, xt, yt, w, b, cfg), 3)
    steps = ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items())
    print(f"  ours, TIMED (default: {res.info['form']} form, damping {cfg.damping:g}, test AND train "
          f"targets): {minmed(t_ours)}; steps of the last [s]: {steps}")
    t_oh = our_hessian_seconds(x, w, b)
    print(f"  our Hessian of the same {size:,}-square matrix (float64, both triangles), TIMED: "
          f"{minmed(t_oh)}")
    print(f"  speed-up: total {total / min(t_ours):,.0f}x (median {total / statistics.median(t_ours):,.0f}x; "
          f"target >= 1,000x); Hessian {t_hess / min(t_oh):,.0f}x (median "
          f"{t_hess / statistics.median(t_oh):,.0f}x; target >= 500x)")
    if res.info["form"] == "block":
        part_floor(x, y, xt, yt, w, b, res, min(t_ours), total)


def block_flops(n: int, m: int, d: int, c: int, train_targets: bool = True) -> dict[str, float]:
    """Floating-point operations of the block form (``forms.run_block``), counted from its
    steps; a symmetric product counts half of a general one."""
    dim = d + 1
    classes = c * (n * dim * dim + dim ** 3 / 3 + 2 * dim * dim * n + n * n * dim)
    woodbury = n ** 3 / 3 + 2 * n ** 3 + (2 * n ** 3 if train_targets else 0)
    test = c * 2 * m * n * dim + 2 * m * n * n  # class products, then the Woodbury term
    return {"class blocks": classes + woodbury, "test pass": test}


def product_rate(dtype: torch.dtype, rows: int = 256, inner: int = 2049, cols: int = 3200,
                 library: str = "torch") -> float:
    """flop/s of torch's (MKL) or numpy's (OpenBLAS) matrix product at this shape."""
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
    out = torch.empty(rows, cols, dtype=dtype)
    reps = max(1, 2048 // rows)
    if library == "numpy":
        an, bn, on = a.numpy(), b.numpy(), out.numpy()
        _, t = timed(lambda: [np.matmul(an, bn, out=on) for _ in range(reps)], 3)
    else:
        _, t = timed(lambda: [torch.matmul(a, b, out=out) for _ in range(reps)], 3)
    return reps * 2 * rows * inner * cols / min(t)


def part_floor(x, y, xt, yt, w, b, res, t_ours: float, t_paper: float) -> None:
    """Where the time goes against this machine's matrix-product rate, and what float32 loses."""
    from robust_transfer.influence.core import _gradient_problem
    from robust_transfer.influence.forms import run_block

    n, m, (c, d) = len(y), len(yt), w.shape
    flops = block_flops(n, m, d, c)
    work = sum(flops.values())
    r64, r32 = product_rate(torch.float64), product_rate(torch.float32)
    print(f"  matrix products here, TIMED at the test pass's shape (256 x {d + 1:,} x {n:,}): "
          f"float64 {r64 / 1e9:.0f} GFLOP/s, float32 {r32 / 1e9:.0f} GFLOP/s")
    best32 = max(r32, *(product_rate(torch.float32, 2048, d + 1, n, lib) for lib in ("torch", "numpy")))
    best64 = max(r64, *(product_rate(torch.float64, 2048, d + 1, n, lib) for lib in ("torch", "numpy")))
    print(f"  best rates TIMED here (2,048 rows, torch/MKL and numpy/OpenBLAS): float64 "
          f"{best64 / 1e9:.0f} GFLOP/s, float32 {best32 / 1e9:.0f} GFLOP/s; a vector unit does half as "
          f"many float64 as float32 operations, so float64 cannot run above about "
          f"{best32 / 2e9:.0f} GFLOP/s on this processor: the block form's exact work needs at least "
          f"{fmt(work / (best32 / 2))}")
    print(f"  block form, COUNTED: {work / 1e12:.2f} TFLOP (" + ", ".join(
        f"{k} {v / 1e12:.2f}" for k, v in flops.items()) + f"); at the float64 rate that is "
        f"{fmt(work / r64)} (test pass alone {fmt(flops['test pass'] / r64)}) against {fmt(t_ours)} "
        f"measured; {t_paper / 1000:.1f} s would be 1,000x")
    problem = _gradient_problem(x, y, xt, yt, w, b, True)
    (low, _, _), t32 = timed(lambda: run_block(problem, res.config.damping, dtype=torch.float32))
    ref = torch.from_numpy(res.scores)
    err = float((low - ref).abs().max() / ref.abs().max())
    top = lambda s: torch.topk(s, 10, dim=1).indices  # noqa: E731
    same = int((top(low) == top(ref)).all(1).sum())
    print(f"  block form in float32 throughout (not offered: for the record), TIMED: {fmt(t32[0])}; "
          f"max difference {err:.1e} of the largest score (target 1e-8); top-10 identical in "
          f"{same:,} of {m:,} test rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["small", "paper"], choices=["small", "paper"])
    parser.add_argument("--rows", type=int, default=2000, help="paper: Hessian rows timed per image")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    if "small" in args.parts:
        part_small()
    if "paper" in args.parts:
        part_paper(rows=args.rows)


if __name__ == "__main__":
    main()
