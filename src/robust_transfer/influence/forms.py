"""Three exact ways to apply ``(H + lambda I)^-1`` with damping, and the choice between them.

(Two approximate ones, ``kfac`` and ``ekfac``, live in :mod:`.kfac`; the choice among all
five under memory and time budgets in :mod:`.planning`.)

All three give ``-g_t^T (H + lambda I)^-1 g_i`` for every test (and training) target ``t``
and training image ``i``; they differ in which matrix they factor.

* ``direct``: the ``P x P`` Hessian in sum-zero coordinates, ``P = (C-1)(d+1)``
  (:mod:`.solvers`). Cost ``~ P^3 / 3``, whatever ``n``.
* ``kernel`` (Woodbury through the ``n x n`` feature Gram matrix): with ``A'_i`` the
  reduced curvature of image ``i`` and ``S_i = (A'_i / n)^(1/2)``, ``H' = J^T J`` for the
  ``n(C-1) x P`` matrix ``J`` with rows ``(S_i e_a) (x) x~_i``. Then
  ``(lambda I + J^T J)^-1 = (I - J^T (lambda I + J J^T)^-1 J) / lambda`` and
  ``J J^T = (S_i^T S_j)_ab (x~_i . x~_j)``: everything goes through Gram matrices of the
  features. Cost ``~ (n(C-1))^3 / 3``: the cheap form when ``n < d + 1``.
* ``block`` (Woodbury around the class blocks, full coordinates): ``H = B - Z^T Z / n`` with
  ``B`` block-diagonal (``C`` blocks ``X~^T diag(p_c) X~ / n``) and ``Z`` the ``n x C(d+1)``
  matrix with rows ``p_i (x) x~_i``, so ``(H + lambda I)^-1 = B_l^-1 + B_l^-1 Z^T S^-1 Z B_l^-1``
  with ``B_l = B + lambda I`` and the ``n x n`` matrix ``S = n I - Z B_l^-1 Z^T``. Cost
  ``~ C (d+1)^3 / 3 + C m n (d+1)``: the cheap form at the paper's setting.

Null space. ``H`` in full coordinates is singular along ``1 (x) v``; every gradient is
orthogonal to those directions and ``H + lambda I`` maps them to themselves, so for
``lambda > 0`` the full-coordinate ``block`` form scores exactly what the sum-zero ``direct``
form scores. The ``kernel`` form works in the sum-zero coordinates itself. Both Woodbury
forms need ``lambda > 0``; at zero damping only ``direct`` applies.
"""

from __future__ import annotations

import itertools
import time

import torch

from robust_transfer.errors import ConfigError
from robust_transfer.influence.errors import factor_failed
from robust_transfer.influence.hessian import curvature_weights, from_sum_zero
from robust_transfer.influence.streaming import held

Tensor = torch.Tensor
FORMS = ("auto", "direct", "kernel", "block", "kfac", "ekfac")
EXACT_FORMS = ("direct", "kernel", "block")
_CHUNK = 2048  # test rows at a time in the kernel form
BLOCK_ROWS = 256  # test rows at a time in the block form: three [rows, n] float64 sums fit in cache
_BANDED_MIN = 2e8  # multiply-adds below which one general product beats the banded one
_GRAM_PARTS, _GRAM_BAND = 8, 400  # bands of the banded symmetric product, and their least rows
# flop-equivalent of one library call (thread start-up and synchronisation): small problems
# are decided by the number of calls, not their flops
_CALL = 2e7


def gram(a: Tensor) -> Tensor:
    """``a @ a.T``, exactly symmetric, computing only the upper block triangle.

    The rows are cut into up to ``_GRAM_PARTS`` bands; band ``i`` against bands ``i..`` is one
    general product, mirrored into the lower triangle. That is ``1/2 + 1/(2 parts)`` of a
    full product's flops at the general product's rate: on the 2-core development machine
    1.2-1.4x faster in float64 than BLAS's own symmetric rank-k update (``dsyrk``), which
    runs at about half the rate of its general product there.

    Args:
        a: ``[k, j]`` float32 or float64.

    Returns:
        ``[k, k]``, both triangles filled.
    """
    k = a.shape[0]
    # small: one product (a single band) beats several calls
    parts = 1 if k * k * a.shape[1] < _BANDED_MIN else max(1, min(_GRAM_PARTS, k // _GRAM_BAND))
    out = torch.empty(k, k, dtype=a.dtype, device=a.device)
    edges = [k * i // parts for i in range(parts + 1)]
    for lo, hi in itertools.pairwise(edges):
        band = a[lo:hi] @ a[lo:].T  # [hi - lo, k - lo]
        out[lo:hi, lo:] = band
        out[hi:, lo:hi] = band[:, hi - lo:].T
        diag = out[lo:hi, lo:hi]
        diag.copy_(diag.triu().add_(diag.triu(1).mT))  # the band's own square: exactly symmetric
    return out


def flop_estimates(n: int, m: int, num_classes: int, feature_dim: int,
                   train_targets: bool = True) -> dict[str, float]:
    """Rough floating-point operation counts of the three forms (see the module docstring).

    Args:
        n, m: training and test images.
        num_classes: ``C``.
        feature_dim: ``d``.
        train_targets: training images are scored as targets too.

    Returns:
        ``{"direct": ..., "kernel": ..., "block": ...}``.
    """
    c, dim = num_classes, feature_dim + 1
    k, p = c - 1, (c - 1) * (feature_dim + 1)
    t = n if train_targets else 0
    direct = (k * (k + 1) * n * dim * dim + p ** 3 / 3 + p * p * min(n + m + t, 2 * n)
              + 2 * m * n * p + 2 * t * n * p)
    nk = n * k
    kernel = n * n * dim + 2 * m * n * dim + nk ** 3 / 3 + 2 * nk * nk * n + 2 * m * nk * n
    block = (c * (n * dim * dim + dim ** 3 / 3 + 2 * dim * dim * n + n * n * dim + 2 * m * n * dim)
             + 7 * n ** 3 / 3 + 2 * m * n * n)
    return {"direct": direct + (k + 20) * _CALL, "kernel": kernel + 30 * _CALL,
            "block": block + (15 * c + 20) * _CALL}


# flop-equivalents per score entry of ranking it (top-k selections, ~5 ns each at 1e11/s)
RANK_COST = 600.0


def kronecker_flops(n: int, m: int, num_classes: int, feature_dim: int,
                    train_targets: bool = True) -> dict[str, float]:
    """Rough operation counts of the approximate forms (:mod:`.kfac`), as :func:`flop_estimates`.

    Returns:
        ``{"kfac": ..., "ekfac": ...}``.
    """
    k, dim = num_classes - 1, feature_dim + 1
    pairs = (m + (n if train_targets else 0)) * n
    factors = n * dim * dim + 4 * dim ** 3 + 2 * (n + m) * dim * dim
    kfac = factors + 2 * pairs * (dim + k) + 2 * pairs
    ekfac = factors + 3 * n * dim * dim + 2 * n * k * dim + 2 * pairs * dim * k + 8 * pairs * k
    return {"kfac": kfac + 20 * _CALL, "ekfac": ekfac + (20 + 3 * k) * _CALL}


def choose_form(form: str, n: int, m: int, num_classes: int, feature_dim: int, damping: float,
                solver: str, precision: str, train_targets: bool = True) -> str:
    """The form to run: ``form`` itself, or for ``auto`` the cheapest exact form that applies.

    (``auto`` with memory and time budgets, which may fall back to ``ekfac``/``kfac``, is
    :func:`~robust_transfer.influence.planning.plan_form`.)

    Raises:
        ConfigError: a Woodbury or Kronecker form asked for where it does not apply.
    """
    if form not in FORMS:
        raise ConfigError(f"unknown influence form '{form}'; valid: {', '.join(FORMS)}")
    why = woodbury_unavailable(damping, solver, precision)
    if form in ("kernel", "block", "kfac", "ekfac") and why:
        raise ConfigError(f"form '{form}' {why}; use form 'direct' (--form direct) or 'auto'")
    if form != "auto":
        return form
    if why:
        return "direct"
    costs = flop_estimates(n, m, num_classes, feature_dim, train_targets)
    return min(costs, key=lambda name: costs[name])


def woodbury_unavailable(damping: float, solver: str, precision: str) -> str:
    if solver != "cholesky":
        return f"applies to solver 'cholesky' only (not '{solver}')"
    if damping <= 0:
        return "needs damping > 0 (the Woodbury identity and the Kronecker factors divide by it)"
    if precision != "float64":
        return f"runs in float64 only (precision '{precision}' is for the direct form)"
    return ""


# --- kernel form -------------------------------------------------------------------------


def run_kernel(problem, damping: float) -> tuple[Tensor | None, Tensor | None, dict]:
    """Scores through ``(lambda I + J J^T)``, an ``n(C-1)`` square matrix.

    Args:
        problem: a :class:`~robust_transfer.influence.solvers.GradientProblem`.
        damping: ``lambda > 0``.

    Returns:
        ``(scores [m, n], train_scores [n, n] or None, timings)``; the scores go to
        ``problem``'s sink, and are returned only when it holds them (:func:`held`).
    """
    t0 = time.perf_counter()
    x, r = problem.x_train, problem.r_train
    n, k = r.shape
    e, u = torch.linalg.eigh(curvature_weights(problem.probs, reduced=True) / n)
    s = (u * e.clamp_min(0).sqrt()[:, None, :]) @ u.mT  # S_i, symmetric [n, K, K]
    g = gram(x)  # x~_i . x~_j
    # M[(i,a),(j,b)] = (S_i S_j)_ab G_ij
    m_mat = torch.einsum("iea,jeb->iajb", s, s).mul_(g[:, None, :, None]).reshape(n * k, n * k)
    m_mat.diagonal().add_(damping)
    info = torch.empty((), dtype=torch.int32)
    torch.linalg.cholesky_ex(m_mat.mT, out=(m_mat.mT, info))  # in place, as the direct form
    factor = m_mat.mT  # lower triangle: L
    if int(info) != 0:
        raise factor_failed(damping, "Cholesky of the kernel matrix failed")
    # J g_i for the training gradients: block j holds (S_j r_i) (x~_j . x~_i)
    j_train = (torch.einsum("jba,ia->jbi", s, r) * g[:, None, :]).reshape(n * k, n)
    z = torch.cholesky_solve(j_train, factor)  # (lambda I + M)^-1 J g_i
    timings = {"kernel_factor_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    m = len(problem.r_test)
    total = 1 + -(-m // _CHUNK) + int(problem.train_targets)
    problem.step(1, total, "kernel matrix")
    sink = problem.full_sink()
    for s0 in range(0, m, _CHUNK):
        xt, rt = problem.x_test[s0:s0 + _CHUNK], problem.r_test[s0:s0 + _CHUNK]
        gt = xt @ x.T  # [t, n]
        j_test = (torch.einsum("jba,ta->jbt", s, rt) * gt.T[:, None, :]).reshape(n * k, -1)
        sink.test(s0, ((rt @ r.T) * gt - j_test.T @ z).div_(-damping))
        problem.step(2 + s0 // _CHUNK, total, "test rows")
    if problem.train_targets:  # n x n, as the kernel matrix itself
        train = ((r @ r.T) * g - j_train.T @ z).div_(-damping)
        sink.train(0, (train + train.T) / 2)
        problem.step(total, total, "training rows")
    timings["scores_s"] = time.perf_counter() - t0
    return (*held(sink), timings)


# --- block form --------------------------------------------------------------------------


def run_block(problem, damping: float,
              dtype: torch.dtype = torch.float64) -> tuple[Tensor | None, Tensor | None, dict]:
    """Scores through the class blocks of ``H`` and one ``n x n`` matrix (full coordinates).

    Two passes. First, per class, the factor of ``B_c + lambda I``, the Gram matrix
    ``X~ B_c^-1 X~^T`` (which gives the ``n x n`` Woodbury matrix and the train-by-train
    scores) and ``B_c^-1 X~^T``, kept for the second pass. Second, ``BLOCK_ROWS`` test rows
    at a time, ``(r_tc x~_t)^T B_c^-1 X~^T`` for every class, summed into two running
    ``[rows, n]`` matrices small enough to stay in the processor's cache: the weighted sums
    over classes are then cache-bound rather than passes over ``[m, n]`` matrices in memory.

    Args:
        problem: a :class:`~robust_transfer.influence.solvers.GradientProblem`.
        damping: ``lambda > 0``.
        dtype: of every step. float64 is the form; float32 throughout is kept only to
            measure what it would lose (``benchmarks/bench_influence_paper.py``): at the
            paper's setting its scores are off by about 1e-3 of the largest.

    Returns:
        ``(scores [m, n], train_scores [n, n] or None, timings)``, float64, as
        :func:`run_kernel`.
    """
    t0 = time.perf_counter()
    x, xt, p = problem.x_train.to(dtype), problem.x_test.to(dtype), problem.probs.to(dtype)
    r, rt = from_sum_zero(problem.r_train).to(dtype), from_sum_zero(problem.r_test).to(dtype)  # p - y
    n, c, m, dim = len(x), p.shape[1], len(xt), x.shape[1]
    p_rows, r_rows = p.T.contiguous(), r.T.contiguous()  # [C, n]: one class per row
    zbz, e_train, base_train = (torch.zeros(n, n, dtype=dtype) for _ in range(3))
    solved = torch.empty(c, dim, n, dtype=dtype)  # B_c^-1 X~^T, class by class
    rows = min(m, BLOCK_ROWS)
    total = c + -(-m // rows)  # progress: class blocks, then passes over test rows
    for cls in range(c):
        pc, rc = p_rows[cls], r_rows[cls]
        block = gram((x * pc.sqrt()[:, None]).T).div_(n)  # X~^T diag(p_c) X~ / n
        block.diagonal().add_(damping)
        factor, info = torch.linalg.cholesky_ex(block)
        if int(info) != 0:
            raise factor_failed(damping, f"Cholesky of class block {cls} failed")
        w = torch.linalg.solve_triangular(factor, x.T, upper=False)  # L^-1 X~^T
        kc = gram(w.T)  # x~_j^T B_c^-1 x~_i
        torch.linalg.solve_triangular(factor.T, w, upper=True, out=solved[cls])
        del w
        base_train.addcmul_(rc[:, None] * kc, rc[None, :])
        kc.mul_(pc[:, None])
        zbz.addcmul_(kc, pc[None, :])
        e_train.addcmul_(kc, rc[None, :])  # (Z B^-1 g_i)_j
        del kc
        problem.step(cls + 1, total, "class blocks")
    schur = zbz.neg_()
    schur.diagonal().add_(n)
    factor, info = torch.linalg.cholesky_ex(schur)
    if int(info) != 0:
        raise factor_failed(damping, "Cholesky of the n x n Woodbury matrix failed")
    sol = torch.cholesky_solve(e_train, factor)  # S^-1 Z B^-1 g_i
    del schur, factor
    timings = {"class_blocks_s": time.perf_counter() - t0}  # factors and the training side
    t0 = time.perf_counter()
    sink = problem.full_sink()
    base, e_test, tc, block_scores = (torch.empty(rows, n, dtype=dtype) for _ in range(4))
    for s0 in range(0, m, rows):
        k = min(rows, m - s0)
        b_k, e_k, t_k = base[:k].zero_(), e_test[:k].zero_(), tc[:k]
        xs, rs = xt[s0:s0 + k], rt[s0:s0 + k]
        for cls in range(c):
            torch.matmul(xs * rs[:, cls, None], solved[cls], out=t_k)  # r_tc x~_t^T B_c^-1 x~_i
            b_k.addcmul_(t_k, r_rows[cls][None, :])
            e_k.addcmul_(t_k, p_rows[cls][None, :])  # (Z B^-1 g_t)_j
        sink.test(s0, torch.addmm(b_k, e_k, sol, out=block_scores[:k]).neg_())
        problem.step(c + s0 // rows + 1, total, "test rows")
    if problem.train_targets:  # n x n, as the Woodbury matrix itself
        train = base_train.add_(e_train.T @ sol).neg_()
        sink.train(0, ((train + train.T) / 2).to(torch.float64))
    timings["scores_s"] = time.perf_counter() - t0
    return (*held(sink), timings)
