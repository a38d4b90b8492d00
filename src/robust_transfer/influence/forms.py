"""Three exact ways to apply ``(H + lambda I)^-1`` with damping, and the choice between them.

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

import time

import torch

from robust_transfer.errors import ConfigError
from robust_transfer.influence.hessian import curvature_weights, from_sum_zero

Tensor = torch.Tensor
FORMS = ("auto", "direct", "kernel", "block")
_CHUNK = 2048  # test rows at a time in the kernel form
_SYRK_MIN = 2e8  # multiply-adds below which a general product is faster than scipy's syrk
# flop-equivalent of one library call (thread start-up and synchronisation): small problems
# are decided by the number of calls, not their flops
_CALL = 2e7


def gram(a: Tensor) -> Tensor:
    """``a @ a.T`` with a symmetric rank-k update (half the flops of a general product).

    Args:
        a: ``[k, j]`` float32 or float64 on the CPU.

    Returns:
        ``[k, k]``, both triangles filled.
    """
    from scipy.linalg import blas

    if a.shape[0] ** 2 * a.shape[1] < _SYRK_MIN:  # small: the call overhead dominates
        return a @ a.T
    syrk = blas.dsyrk if a.dtype == torch.float64 else blas.ssyrk
    # a row-major [k, j] is a column-major [j, k] = a^T: ask for (a^T)^T (a^T), no copy
    upper = torch.from_numpy(syrk(1.0, a.contiguous().numpy().T, trans=1, lower=0))
    return upper.triu() + upper.triu(1).T


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


def choose_form(form: str, n: int, m: int, num_classes: int, feature_dim: int, damping: float,
                solver: str, precision: str, train_targets: bool = True) -> str:
    """The form to run: ``form`` itself, or for ``auto`` the cheapest that applies.

    Raises:
        ConfigError: a Woodbury form asked for where it does not apply.
    """
    if form not in FORMS:
        raise ConfigError(f"unknown influence form '{form}'; valid: {', '.join(FORMS)}")
    why = _woodbury_unavailable(damping, solver, precision)
    if form in ("kernel", "block") and why:
        raise ConfigError(f"form '{form}' {why}; use form 'direct' (--form direct) or 'auto'")
    if form != "auto":
        return form
    if why:
        return "direct"
    costs = flop_estimates(n, m, num_classes, feature_dim, train_targets)
    return min(costs, key=costs.get)


def _woodbury_unavailable(damping: float, solver: str, precision: str) -> str:
    if solver != "cholesky":
        return f"applies to solver 'cholesky' only (not '{solver}')"
    if damping <= 0:
        return "needs damping > 0 (the Woodbury identity divides by it)"
    if precision != "float64":
        return f"runs in float64 only (precision '{precision}' is for the direct form)"
    return ""


# --- kernel form -------------------------------------------------------------------------


def run_kernel(problem, damping: float) -> tuple[Tensor, Tensor | None, dict]:
    """Scores through ``(lambda I + J J^T)``, an ``n(C-1)`` square matrix.

    Args:
        problem: a :class:`~robust_transfer.influence.solvers.GradientProblem`.
        damping: ``lambda > 0``.

    Returns:
        ``(scores [m, n], train_scores [n, n] or None, timings)``.
    """
    from robust_transfer.influence.solvers import _factor_failed

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
        raise _factor_failed(damping, "Cholesky of the kernel matrix failed")
    # J g_i for the training gradients: block j holds (S_j r_i) (x~_j . x~_i)
    j_train = (torch.einsum("jba,ia->jbi", s, r) * g[:, None, :]).reshape(n * k, n)
    z = torch.cholesky_solve(j_train, factor)  # (lambda I + M)^-1 J g_i
    timings = {"kernel_factor_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    m = len(problem.r_test)
    scores = torch.empty(m, n, dtype=torch.float64)
    for s0 in range(0, m, _CHUNK):
        xt, rt = problem.x_test[s0:s0 + _CHUNK], problem.r_test[s0:s0 + _CHUNK]
        gt = xt @ x.T  # [t, n]
        j_test = (torch.einsum("jba,ta->jbt", s, rt) * gt.T[:, None, :]).reshape(n * k, -1)
        scores[s0:s0 + _CHUNK] = ((rt @ r.T) * gt - j_test.T @ z).div_(-damping)
    train = None
    if problem.train_targets:
        train = ((r @ r.T) * g - j_train.T @ z).div_(-damping)
        train = (train + train.T) / 2
    timings["scores_s"] = time.perf_counter() - t0
    return scores, train, timings


# --- block form --------------------------------------------------------------------------


def run_block(problem, damping: float) -> tuple[Tensor, Tensor | None, dict]:
    """Scores through the class blocks of ``H`` and one ``n x n`` matrix (full coordinates).

    Args:
        problem: a :class:`~robust_transfer.influence.solvers.GradientProblem`.
        damping: ``lambda > 0``.

    Returns:
        ``(scores [m, n], train_scores [n, n] or None, timings)``.
    """
    from robust_transfer.influence.solvers import _factor_failed

    t0 = time.perf_counter()
    x, xt, p = problem.x_train, problem.x_test, problem.probs
    r, rt = from_sum_zero(problem.r_train), from_sum_zero(problem.r_test)  # p - y
    n, c, m = len(x), p.shape[1], len(xt)
    f64 = torch.float64
    base, e_test = torch.zeros(m, n, dtype=f64), torch.zeros(m, n, dtype=f64)
    zbz, e_train, base_train = (torch.zeros(n, n, dtype=f64) for _ in range(3))
    for cls in range(c):
        pc, rc, rtc = p[:, cls], r[:, cls], rt[:, cls]
        block = gram((x * pc.sqrt()[:, None]).T).div_(n)  # X~^T diag(p_c) X~ / n
        block.diagonal().add_(damping)
        factor, info = torch.linalg.cholesky_ex(block)
        if int(info) != 0:
            raise _factor_failed(damping, f"Cholesky of class block {cls} failed")
        w = torch.linalg.solve_triangular(factor, x.T, upper=False)  # L^-1 X~^T
        kc = gram(w.T)  # x~_j^T B_c^-1 x~_i
        tc = xt @ torch.linalg.solve_triangular(factor.T, w, upper=True)  # x~_t^T B_c^-1 x~_i
        zbz.addcmul_(pc[:, None] * kc, pc[None, :])
        e_train.addcmul_(pc[:, None] * kc, rc[None, :])  # (Z B^-1 g_i)_j
        base_train.addcmul_(rc[:, None] * kc, rc[None, :])
        tc.mul_(rtc[:, None])
        base.addcmul_(tc, rc[None, :])
        e_test.addcmul_(tc, pc[None, :])  # (Z B^-1 g_t)_j, stored [t, j]
    schur = -zbz
    schur.diagonal().add_(n)
    factor, info = torch.linalg.cholesky_ex(schur)
    if int(info) != 0:
        raise _factor_failed(damping, "Cholesky of the n x n Woodbury matrix failed")
    sol = torch.cholesky_solve(e_train, factor)  # S^-1 Z B^-1 g_i
    timings = {"class_blocks_s": time.perf_counter() - t0}  # factors and all Gram products
    t0 = time.perf_counter()
    scores = base.add_(e_test @ sol).neg_()
    train = None
    if problem.train_targets:
        train = base_train.add_(e_train.T @ sol).neg_()
        train = (train + train.T) / 2
    timings["scores_s"] = time.perf_counter() - t0
    return scores, train, timings
