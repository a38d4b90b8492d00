"""Kronecker-factored inverses of the head's Hessian: K-FAC and EK-FAC (approximate forms).

For softmax regression the per-example gradient is ``g_i = r_i (x) x~_i`` (sum-zero
residual ``r_i``, augmented input ``x~_i``) and the Hessian is
``H = E[A_i (x) x~_i x~_i^T]`` with ``A_i = diag(p_i) - p_i p_i^T``. Both forms replace it by
something whose inverse is cheap, in the sum-zero coordinates of :mod:`.hessian`:

* ``kfac`` (Martens & Grosse 2015): ``H ~ S (x) A`` with ``S = E[A_i]`` (``(C-1)`` square)
  and ``A = E[x~ x~^T]`` (``D = d + 1`` square). The damping is split into the factors
  by Martens and Grosse's pi rule, ``(S + s I) (x) (A + a I)`` with ``s = sqrt(lambda) / pi``,
  ``a = sqrt(lambda) pi`` and ``pi = sqrt((tr A / D) / (tr S / (C-1)))`` (so ``s a = lambda``),
  which keeps the inverse a Kronecker product and
  ``score(t, i) = -(r_t^T S_s^-1 r_i) (x~_t^T A_a^-1 x~_i)``: two Gram products of
  whitened residuals and features, ``O(m n (C + D))``.
* ``ekfac`` (George et al. 2018): the eigenbasis ``U_S (x) U_A`` of the K-FAC factors with
  the ``(C-1) D`` eigenvalues refitted to the Hessian's own diagonal in that basis,
  ``Lambda_cj = E[(u_c^T A_i u_c) (v_j^T x~_i)^2]``, the exact expectation over labels
  drawn from the model of the squared rotated gradients (the "true Fisher" that
  kronfluence samples). Then ``(Q Lambda Q^T + lambda I)^-1`` is applied exactly, so the
  damping means what it means for the exact forms; ``score(t, i) =
  -sum_c a_tc a_ic sum_j b_tj b_ij / (Lambda_cj + lambda)`` with ``a = U_S^T r``,
  ``b = U_A^T x~``: ``C - 1`` weighted Gram products, ``O(m n C D)``.

Both hand their scores to the problem's sink ``SCORE_ROWS`` target rows at a time, so nothing
of size ``m x n`` is held unless the sink keeps it. The factors, their eigendecompositions
and the corrected eigenvalues are float64; the score products (nearly all the work) run
in float32 by default, twice float64's rate here, since their rounding (about 1e-7 of a
score) is far below what the Kronecker approximation itself changes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from robust_transfer.influence.errors import factor_failed
from robust_transfer.influence.forms import gram
from robust_transfer.influence.hessian import sum_zero_basis
from robust_transfer.influence.streaming import held

Tensor = torch.Tensor
KFAC_FORMS = ("kfac", "ekfac")
SCORE_ROWS = 256  # target rows per score block
SCORE_DTYPE = torch.float32  # of the score products (see the module docstring)


def kronecker_covariances(x_aug: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
    """The two K-FAC factors of the head's Hessian, ``S = E[A_i]`` (sum-zero) and ``A = E[x~ x~^T]``.

    Args:
        x_aug: ``[n, D]`` augmented training features (float64).
        probs: ``[n, C]`` training probabilities.

    Returns:
        ``S [C-1, C-1]`` and ``A [D, D]``.
    """
    n = len(x_aug)
    q = sum_zero_basis(probs.shape[1]).to(probs)
    mean_a = torch.diag(probs.mean(0)) - probs.T @ probs / n  # E[diag(p) - p p^T]
    return q.T @ mean_a @ q, gram(x_aug.T).div_(n)


@dataclass
class KroneckerFactors:
    """The eigendecompositions of ``S`` and ``A`` (EK-FAC's basis).

    Attributes:
        s_values, s_vectors: ``[C-1]``, ``[C-1, C-1]``.
        a_values, a_vectors: ``[D]``, ``[D, D]``.
    """

    s_values: Tensor
    s_vectors: Tensor
    a_values: Tensor
    a_vectors: Tensor


def kronecker_factors(x_aug: Tensor, probs: Tensor) -> KroneckerFactors:
    """:func:`kronecker_covariances`, decomposed (eigenvalues clamped at 0)."""
    cov_s, cov_a = kronecker_covariances(x_aug, probs)
    s_values, s_vectors = torch.linalg.eigh(cov_s)
    a_values, a_vectors = torch.linalg.eigh(cov_a)
    return KroneckerFactors(s_values.clamp_min(0), s_vectors, a_values.clamp_min(0), a_vectors)


def split_damping(cov_s: Tensor, cov_a: Tensor, damping: float) -> tuple[float, float]:
    """Martens and Grosse's pi split of ``lambda`` into ``(s, a)`` with ``s a = lambda``:
    ``pi = sqrt(mean eigenvalue of A / mean eigenvalue of S)`` (traces over sizes)."""
    mean_s = float(cov_s.diagonal().mean())
    mean_a = float(cov_a.diagonal().mean())
    pi = (mean_a / mean_s) ** 0.5 if mean_s > 0 and mean_a > 0 else 1.0
    root = damping ** 0.5
    return root / pi, root * pi


def corrected_eigenvalues(factors: KroneckerFactors, x_aug: Tensor, probs: Tensor,
                          chunk: int = 4096) -> Tensor:
    """EK-FAC's ``Lambda [C-1, D]``: the Hessian's diagonal in the Kronecker eigenbasis.

    ``Lambda_cj = (1/n) sum_i (w_c^T A_i w_c) (v_j^T x~_i)^2`` with ``w_c = Q u_c`` (the
    eigenvector in full class coordinates) and ``w^T A_i w = p_i . w^2 - (p_i . w)^2``.
    """
    n = len(x_aug)
    w = sum_zero_basis(probs.shape[1]).to(probs) @ factors.s_vectors  # [C, C-1]
    curv = probs @ (w * w) - (probs @ w) ** 2  # [n, C-1]
    out = torch.zeros(w.shape[1], x_aug.shape[1], dtype=torch.float64)
    for s in range(0, n, chunk):
        b = x_aug[s:s + chunk] @ factors.a_vectors
        out.addmm_(curv[s:s + chunk].T, b * b)
    return out.div_(n).clamp_min_(0)


def run_kronecker(problem, damping: float, corrected: bool,
                  dtype: torch.dtype = SCORE_DTYPE) -> dict:
    """K-FAC (``corrected=False``) or EK-FAC scores into ``problem``'s sink.

    Args:
        problem: a :class:`~robust_transfer.influence.solvers.GradientProblem` with a sink.
        damping: ``lambda > 0``.
        corrected: refit the eigenvalues (EK-FAC).
        dtype: of the score products.

    Returns:
        ``{"timings", "info", "held"}``, ``held`` the ``(scores, train_scores)`` when the
        sink holds them (:func:`~robust_transfer.influence.streaming.held`).

    Raises:
        SingularHessianError: ``damping`` is not positive.
    """
    if not damping > 0:
        raise factor_failed(damping, "K-FAC and EK-FAC need damping > 0")
    t0 = time.perf_counter()
    if corrected:
        factors = kronecker_factors(problem.x_train, problem.probs)
        inv = corrected_eigenvalues(factors, problem.x_train, problem.probs).add_(damping).reciprocal_()
        side: _Whitened | _Rotated = _Rotated(factors, inv, dtype)
        info: dict = {"eigenvalue_correction": True}
    else:
        cov_s, cov_a = kronecker_covariances(problem.x_train, problem.probs)
        s_damp, a_damp = split_damping(cov_s, cov_a, damping)
        side = _Whitened(cov_s, cov_a, s_damp, a_damp, damping, dtype)
        info = {"eigenvalue_correction": False, "damping_s": s_damp, "damping_a": a_damp}
    train = side.transform(problem.r_train, problem.x_train)
    test = side.transform(problem.r_test, problem.x_test)
    timings = {"factors_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    splits = [("test", test)] + ([("train", train)] if problem.train_targets else [])
    total = sum(-(-len(t[0]) // SCORE_ROWS) for _, t in splits)
    done, sink = 0, problem.full_sink()
    for split, (r_t, x_t) in splits:
        emit = sink.test if split == "test" else sink.train
        for s in range(0, len(r_t), SCORE_ROWS):
            emit(s, side.scores(r_t[s:s + SCORE_ROWS], x_t[s:s + SCORE_ROWS], *train))
            done += 1
            problem.step(done, total, f"{split} rows")
    timings["scores_s"] = time.perf_counter() - t0
    return {"timings": timings, "info": info, "held": held(sink)}


class _Whitened:
    """K-FAC: residuals and features whitened by the Cholesky factors of the damped factors,
    ``x^ = L_A^-1 x~`` with ``A + a I = L_A L_A^T`` (so ``x^_t . x^_i = x~_t^T (A + a I)^-1 x~_i``):
    a Cholesky and a triangular solve instead of an eigendecomposition (10x cheaper here)."""

    def __init__(self, cov_s: Tensor, cov_a: Tensor, s_damp: float, a_damp: float,
                 damping: float, dtype: torch.dtype) -> None:
        self.s, self.a = _damped_cholesky(cov_s, s_damp, damping), _damped_cholesky(cov_a, a_damp, damping)
        self.dtype = dtype

    def transform(self, r: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        return _whiten(self.s, r).to(self.dtype), _whiten(self.a, x).to(self.dtype)

    @staticmethod
    def scores(r_t: Tensor, x_t: Tensor, r: Tensor, x: Tensor) -> Tensor:
        return (r_t @ r.T).mul_(x_t @ x.T).neg_()


def _damped_cholesky(cov: Tensor, shift: float, damping: float) -> Tensor:
    mat = cov.clone()
    mat.diagonal().add_(shift)
    factor, info = torch.linalg.cholesky_ex(mat)
    if int(info) != 0:
        raise factor_failed(damping, "Cholesky of a K-FAC factor failed")
    return factor


def _whiten(factor: Tensor, rows: Tensor, chunk: int = 8192) -> Tensor:
    """``rows L^-T``: each row ``v`` becomes ``L^-1 v``, ``chunk`` rows at a time."""
    out = torch.empty_like(rows)
    for s in range(0, len(rows), chunk):
        out[s:s + chunk] = torch.linalg.solve_triangular(factor, rows[s:s + chunk].T, upper=False).T
    return out


class _Rotated:
    """EK-FAC: residuals and features rotated into the eigenbasis, ``1/(Lambda + lambda)``."""

    def __init__(self, factors: KroneckerFactors, inv: Tensor, dtype: torch.dtype) -> None:
        self.s, self.a, self.inv = factors.s_vectors, factors.a_vectors, inv.to(dtype)
        self.dtype = dtype

    def transform(self, r: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        return (r @ self.s).to(self.dtype), (x @ self.a).to(self.dtype)

    def scores(self, a_t: Tensor, b_t: Tensor, a: Tensor, b: Tensor) -> Tensor:
        out = torch.zeros(len(a_t), len(a), dtype=a.dtype)
        for c in range(len(self.inv)):
            kc = (b_t * (self.inv[c] * a_t[:, c, None])) @ b.T
            out.addcmul_(kc, a[:, c][None, :])
        return out.neg_()


def kfac_scores_reference(problem, damping: float, corrected: bool) -> Tensor:
    """The same scores by forming the approximate inverse densely (small problems; tests).

    Returns:
        ``[m, n]`` float64.
    """
    factors = kronecker_factors(problem.x_train, problem.probs)
    kron_vectors = torch.kron(factors.s_vectors, factors.a_vectors)
    if corrected:
        values = corrected_eigenvalues(factors, problem.x_train, problem.probs).flatten() + damping
    else:
        s_damp, a_damp = split_damping(*kronecker_covariances(problem.x_train, problem.probs), damping)
        values = torch.kron(factors.s_values + s_damp, factors.a_values + a_damp)
    inverse = kron_vectors @ torch.diag(1 / values) @ kron_vectors.T
    g_train = problem.grads("train")
    return -(problem.grads("test") @ inverse @ g_train.T)
