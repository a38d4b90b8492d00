"""Ways to apply ``(H' + lambda I)^-1`` to many gradients at once, and their failure modes.

Every solver works in the sum-zero coordinates of :mod:`.hessian` and returns the
influence scores directly:

* ``cholesky``: factor ``H' + lambda I = L L^T`` in place, whiten every gradient with one
  triangular solve (``w = L^-1 g``); then ``g_t^T (H' + lambda I)^-1 g_i = w_t . w_i``, so
  test-by-train and train-by-train scores are two matrix products.
* ``eigh``: one eigendecomposition, whitening with ``(e + lambda)^-1/2``.
* ``pinv``: the paper's truncated pseudo-inverse, eigenvalues of ``H' + lambda I`` below
  ``rcond * max`` dropped (the paper: ``rcond = 5e-2``, ``lambda = 0``).
* ``cg``: matrix-free preconditioned conjugate gradients on Hessian-vector products, for
  heads whose Hessian does not fit in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from robust_transfer.events import Listener, StepDone
from robust_transfer.influence.errors import (
    ConvergenceError,
    InfluenceMemoryError,
    SingularHessianError,
    factor_failed,
)
from robust_transfer.influence.forms import BLOCK_ROWS, choose_form, gram, run_block, run_kernel
from robust_transfer.influence.hessian import (
    hessian_from_probs,
    hessian_vector_product,
    outer_rows,
    sum_zero_basis,
)
from robust_transfer.influence.kfac import KFAC_FORMS, run_kronecker
from robust_transfer.influence.kfac import SCORE_ROWS as KFAC_ROWS
from robust_transfer.influence.streaming import FullScores, ScoreSink
from robust_transfer.registry import Registry
from robust_transfer.units import format_bytes

Tensor = torch.Tensor
_BYTES = 8  # float64
# eigenvalues of X~^T X~ below this fraction of the largest count as zero at zero damping
_RANK_RTOL = 1e-10
_SCORE_CHUNK = 1024  # test gradients formed at a time
_HVP_CHUNK = 512  # right-hand sides per Hessian-vector product in refinement
PRECISIONS = ("float64", "mixed")


@dataclass
class GradientProblem:
    """Everything a solver needs, in sum-zero coordinates (``P = (C-1)(d+1)``).

    Per-example gradients are kept factored, ``g_i = r_i (x) x~_i``, so that the matrix-free
    path never holds all of them (``n P`` numbers is 52 GB for an ImageNet head).

    Attributes:
        x_train: ``[n, D]`` augmented training features.
        probs: ``[n, C]`` training probabilities.
        r_train: ``[n, C-1]`` training residuals ``Q^T (p - y)``.
        x_test: ``[m, D]`` augmented test features.
        r_test: ``[m, C-1]`` test residuals.
        train_targets: also score training images as targets (and self-influence).
        callback: called with a :class:`~robust_transfer.events.StepDone` as the solve
            advances, or ``None``.
        sink: where the solver puts score rows (:mod:`.streaming`); ``None``: a
            :class:`~robust_transfer.influence.streaming.FullScores` per call.
    """

    x_train: Tensor
    probs: Tensor
    r_train: Tensor
    x_test: Tensor
    r_test: Tensor
    train_targets: bool = True
    callback: Listener | None = None
    sink: ScoreSink | None = None

    def full_sink(self) -> ScoreSink:
        """The sink; when unset, a new :class:`~robust_transfer.influence.streaming.FullScores`
        for this one call (a form run on its own returns its matrices)."""
        if self.sink is None:
            return FullScores(len(self.r_test), len(self.r_train), self.train_targets)
        return self.sink

    def step(self, done: int, total: int, what: str) -> None:
        """Report ``done`` of ``total`` steps of the solve to the callback, if any."""
        if self.callback is not None:
            self.callback(StepDone(done, total, what))

    def grads(self, split: str, rows: slice = slice(None)) -> Tensor:
        """Dense gradients ``[k, P]`` of some ``train`` or ``test`` rows."""
        x, r = (self.x_train, self.r_train) if split == "train" else (self.x_test, self.r_test)
        return outer_rows(r[rows], x[rows])

    def dot_train(self, v: Tensor) -> Tensor:
        """``v @ G_train^T`` without forming ``G_train``: ``[k, P] -> [k, n]``."""
        k, c = len(v), self.r_train.shape[1]
        u = (v.reshape(k * c, -1) @ self.x_train.T).reshape(k, c, -1)  # [k, C-1, n]
        return (u * self.r_train.T).sum(1)


@dataclass
class SolverOutput:
    """What a solver returns besides the scores, which went to the problem's sink.

    Attributes:
        self_influence: ``[n]`` when the solver computes it on its own (``cg``); else
            ``None`` and it is the diagonal of the training rows.
        info, timings: details and seconds per step.
    """

    self_influence: Tensor | None = None
    info: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


class SolverOptions(Protocol):
    """The solver settings a run reads (an
    :class:`~robust_transfer.influence.core.InfluenceConfig` is one; its fields' metadata
    holds their defaults and help, stated once there)."""

    @property
    def precision(self) -> str: ...

    @property
    def form(self) -> str: ...

    @property
    def rcond(self) -> float: ...

    @property
    def refine_tol(self) -> float: ...

    @property
    def refine_max_iter(self) -> int: ...

    @property
    def cg_tol(self) -> float: ...

    @property
    def cg_max_iter(self) -> int: ...

    @property
    def cg_batch(self) -> int: ...


@dataclass(frozen=True)
class SolverSpec:
    """A registered solver: ``run(problem, damping, options) -> SolverOutput``."""

    name: str
    run: Callable[[GradientProblem, float, SolverOptions], SolverOutput]
    description: str


SOLVERS: Registry[SolverSpec] = Registry("influence solver")


# --- memory ----------------------------------------------------------------------------


def available_memory() -> int | None:
    """Bytes the OS reports as available (psutil, else ``/proc/meminfo``), or ``None``."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def estimate_memory(n_train: int, n_test: int, num_classes: int, feature_dim: int,
                    solver: str, train_targets: bool = True, cg_batch: int = 256,
                    form: str = "direct", precision: str = "float64",
                    scores: str = "full") -> int:
    """Peak bytes of :func:`~robust_transfer.influence.compute_influence`, roughly.

    Args:
        n_train, n_test: numbers of training and test images.
        num_classes: ``C``.
        feature_dim: ``d``.
        solver: a name in :data:`SOLVERS`.
        train_targets: training images are scored as targets too.
        cg_batch: right-hand sides per conjugate-gradient batch.
        form: ``direct``, ``kernel``, ``block`` (see :mod:`.forms`), ``kfac`` or ``ekfac``
            (:mod:`.kfac`); cholesky only.
        precision: ``float64`` or ``mixed`` (direct cholesky only).
        scores: ``full`` (the ``[m, n]`` and ``[n, n]`` matrices are kept) or ``stream``
            (rankings only, :mod:`.streaming`; the exact forms still hold the ``[n, n]``
            training matrix, which their factors are as large as).

    Returns:
        Bytes.
    """
    n, m, c, dim = n_train, n_test, num_classes, feature_dim + 1
    p, k = (c - 1) * dim, c - 1
    total = 2 * (n + m) * (dim + c) + _score_memory(n, m, train_targets, scores, form)
    if form in KFAC_FORMS:
        rows = min(m + n, KFAC_ROWS)  # the transformed features are float32: half entries
        total += (n + m) * (dim + k) // 2 + 3 * dim * dim + (3 if form == "ekfac" else 2) * rows * n
        return int((total + (2 * 4096 * dim if form == "ekfac" else 0)) * _BYTES)
    if solver == "cg":
        b = min(cg_batch, n + m)
        total += 7 * b * p + 3 * b * c * n + 3 * dim * dim + 2 * c * c
    elif solver == "cholesky" and form == "kernel":
        chunk = min(m, 2048)
        total += 2 * (n * k) ** 2 + 2 * n * k * n + n * k * chunk + 2 * chunk * n + n * k * k
    elif solver == "cholesky" and form == "block":
        # B_c^-1 X~^T for every class, three [BLOCK_ROWS, n] running sums, the n x n matrices
        total += c * dim * n + 3 * min(m, BLOCK_ROWS) * n + 8 * n * n + 3 * dim * dim + 2 * dim * n
    else:
        build = n * p + dim * p + n * c * c  # one block row and the curvatures
        total += (p * p // 2 if precision == "mixed" else p * p) + build
        side = n if train_targets or m >= n else m
        if solver == "cholesky" and (precision == "mixed" or m > n or not train_targets):
            total += (5 if precision == "mixed" else 2) * side * p + min(m, _SCORE_CHUNK) * p
            if precision == "mixed":
                total += 3 * _HVP_CHUNK * c * n
        else:
            total += (n + m) * p
        if solver in ("eigh", "pinv"):
            total += 2 * p * p + (n + m) * p  # eigenvectors, LAPACK's copy, rotated gradients
    return int(total * _BYTES)


def _score_memory(n: int, m: int, train_targets: bool, scores: str, form: str) -> int:
    """Entries of the held scores, or of the streamed rankings and their temporaries."""
    if scores == "full":
        return m * n + (n * n + n if train_targets else 0)
    held_train = n * n if train_targets and form not in KFAC_FORMS else 0
    return held_train + (m + n) * 140 + 5 * min(m + n, 256) * n


def check_memory(estimate: int, limit: int | None, solver: str, describe: str,
                 cg_estimate: int | None = None, train_targets: bool = False) -> None:
    """Refuse before allocating when ``estimate`` exceeds ``limit``.

    Raises:
        InfluenceMemoryError: with the estimate and the conjugate-gradient alternative.
    """
    if limit is None or estimate <= limit:
        return
    if solver == "cg":
        hint = "lower cg_batch (--cg-batch) or use fewer test images"
    else:
        cg = f" (about {format_bytes(cg_estimate)})" if cg_estimate else ""
        hint = f"use the matrix-free solver 'cg' (--solver cg){cg} or fewer images"
    if train_targets:  # the train-by-train matrix grows as n^2 whatever the solver
        hint += ", or skip training images as targets (--no-train-targets)"
    raise InfluenceMemoryError(
        f"influence with solver '{solver}' needs about {format_bytes(estimate)} for {describe} "
        f"but only {format_bytes(limit)} is available; {hint}")


# --- singularity -----------------------------------------------------------------------


def check_nonsingular(x_aug: Tensor, num_classes: int) -> None:
    """At zero damping, refuse when the features leave ``H'`` singular.

    ``H'`` is positive definite exactly when the augmented features span all ``d + 1``
    dimensions (probabilities are positive), so the feature rank tells.

    Raises:
        SingularHessianError: explaining both null spaces and suggesting damping.
    """
    n, dim = x_aug.shape
    evals = torch.linalg.eigvalsh(x_aug.T @ x_aug)
    rank = int((evals > evals.max() * _RANK_RTOL).sum())
    if rank == dim:
        return
    extra = (num_classes - 1) * (dim - rank)
    raise SingularHessianError(
        f"the last-layer Hessian is singular at damping 0: softmax ignores adding one vector "
        f"to every class's weights (a null space of dimension d+1 = {dim}, projected out here), "
        f"and the {n} training features span only {rank} of the {dim} dimensions of [x; 1], "
        f"leaving {extra} = (C-1)*({dim}-{rank}) more null directions; "
        f"pass a damping > 0 (e.g. --damping 1e-3) or use solver 'pinv'")


# --- direct solvers --------------------------------------------------------------------


def _hessian(problem: GradientProblem, dtype: torch.dtype = torch.float64) -> Tensor:
    """The upper block triangle of ``H'`` (all Cholesky of ``H'^T`` and ``eigh(UPLO="U")`` read)."""
    return hessian_from_probs(problem.x_train, problem.probs, reduced=True, mirror=False,
                              dtype=dtype)


def _scores_from_whitened(problem: GradientProblem, w_test: Tensor, w_train: Tensor,
                          info: dict, timings: dict) -> SolverOutput:
    _emit_whitened(problem, w_test, w_train)
    return SolverOutput(None, info, timings)


def _emit_whitened(problem: GradientProblem, w_test: Tensor, w_train: Tensor) -> None:
    """Scores ``-w_t . w_i`` of whitened gradients into the sink, ``_SCORE_CHUNK`` test rows at a
    time; the train-by-train matrix (``n x n``) as one symmetric product."""
    sink = problem.full_sink()
    for s0 in range(0, len(w_test), _SCORE_CHUNK):
        sink.test(s0, (w_test[s0:s0 + _SCORE_CHUNK] @ w_train.T).neg_())
    if problem.train_targets:
        sink.train(0, gram(w_train).neg_())


def _cholesky_whiten(hess: Tensor, damping: float, grads: list[Tensor]) -> None:
    """Factor ``hess + damping I`` and whiten ``grads``, all in place.

    ``hess`` holds ``H'`` in its upper triangle; its transpose is then the lower triangle
    of the same matrix in column-major order, which lets LAPACK overwrite it without a copy.
    """
    _cholesky_factor(hess, damping)
    for g in grads:
        torch.linalg.solve_triangular(hess.mT, g.mT, upper=False, out=g.mT)


def _run_cholesky(problem: GradientProblem, damping: float, opts: SolverOptions) -> SolverOutput:
    n, m = len(problem.r_train), len(problem.r_test)
    c, d = problem.probs.shape[1], problem.x_train.shape[1] - 1
    precision = opts.precision
    form = choose_form(opts.form, n, m, c, d, damping, "cholesky", precision,
                       problem.train_targets)
    if form in ("kernel", "block"):
        *_, timings = (run_kernel if form == "kernel" else run_block)(problem, damping)
        return SolverOutput(None, {"form": form, "precision": "float64"}, timings)
    if form in KFAC_FORMS:
        out = run_kronecker(problem, damping, corrected=form == "ekfac")
        return SolverOutput(None, {"form": form, "precision": "float32 score products",
                                   **out["info"]}, out["timings"])
    info = {"form": "direct", "precision": precision}
    if precision == "mixed" or m > n or not problem.train_targets:
        return _run_direct_solve(problem, damping, opts, info)
    return _run_direct_whiten(problem, damping, info)


def _run_direct_whiten(problem: GradientProblem, damping: float, info: dict) -> SolverOutput:
    """At most as many test as training targets: whiten all ``n + m`` gradients once
    (``w = L^-1 g``), which beats solving twice for the ``n`` training gradients."""
    timings = {}
    t0 = time.perf_counter()
    hess = _hessian(problem)
    timings["hessian_s"] = time.perf_counter() - t0
    problem.step(1, 3, "Hessian")
    t0 = time.perf_counter()
    w_test, w_train = problem.grads("test"), problem.grads("train")  # whitened in place
    _cholesky_whiten(hess, damping, [w_test, w_train])
    del hess
    timings["factor_solve_s"] = time.perf_counter() - t0
    problem.step(2, 3, "factor and solves")
    t0 = time.perf_counter()
    _emit_whitened(problem, w_test, w_train)
    timings["scores_s"] = time.perf_counter() - t0
    problem.step(3, 3, "scores")
    return SolverOutput(None, info, timings)


def _run_direct_solve(problem: GradientProblem, damping: float, opts: SolverOptions,
                      info: dict) -> SolverOutput:
    """``V = (H' + lambda I)^-1 G_train`` (refined when mixed), then scores ``G V^T``.

    ``precision="mixed"``: ``H'``, its factor and the solves in float32; the float64
    residual ``G - (H' + lambda I) V`` from matrix-free Hessian-vector products is solved
    again in float32 and added (iterative refinement) until the correction is below
    ``refine_tol`` of the solution.
    """
    mixed = opts.precision == "mixed"
    dtype = torch.float32 if mixed else torch.float64
    timings = {}
    total = 5 if mixed else 4
    t0 = time.perf_counter()
    hess = _hessian(problem, dtype)
    timings["hessian_s"] = time.perf_counter() - t0
    problem.step(1, total, "Hessian")
    t0 = time.perf_counter()
    _cholesky_factor(hess, damping)
    timings["factor_s"] = time.perf_counter() - t0
    problem.step(2, total, "factor")
    t0 = time.perf_counter()
    # solve for the smaller side: test gradients when only they are targets and are fewer
    side = "test" if not problem.train_targets and len(problem.r_test) < len(problem.r_train) else "train"
    g = problem.grads(side)
    v = _factor_solve(hess, g)
    timings["solve_s"] = time.perf_counter() - t0
    problem.step(3, total, "solves")
    if mixed:
        t0 = time.perf_counter()
        v, steps = _refine(problem, damping, hess, g, v, opts)
        timings["refine_s"] = time.perf_counter() - t0
        problem.step(4, total, "refinement")
        info.update(steps)
    del hess
    t0 = time.perf_counter()
    if side == "test":
        timings["scores_s"] = time.perf_counter() - t0
    sink = problem.full_sink()
    if side == "test":
        for s0 in range(0, len(v), _SCORE_CHUNK):
            sink.test(s0, problem.dot_train(v[s0:s0 + _SCORE_CHUNK]).neg_())
        timings["scores_s"] = time.perf_counter() - t0
        problem.step(total, total, "scores")
        return SolverOutput(None, info, timings)
    for s0 in range(0, len(problem.r_test), _SCORE_CHUNK):
        sink.test(s0, (problem.grads("test", slice(s0, s0 + _SCORE_CHUNK)) @ v.T).neg_())
    if problem.train_targets:  # n x n
        train = -(g @ v.T)
        sink.train(0, (train + train.T) / 2)
    timings["scores_s"] = time.perf_counter() - t0
    problem.step(total, total, "scores")
    return SolverOutput(None, info, timings)


def _cholesky_factor(hess: Tensor, damping: float) -> None:
    """``hess + damping I = L L^T`` in place: ``L`` is ``hess.mT``'s lower triangle."""
    hess.diagonal().add_(damping)
    info = torch.empty((), dtype=torch.int32)
    torch.linalg.cholesky_ex(hess.mT, out=(hess.mT, info))
    if int(info) != 0:
        raise factor_failed(damping, "Cholesky failed")


def _factor_solve(hess: Tensor, rows: Tensor) -> Tensor:
    """``rows (hess + damping I)^-1`` from the in-place factor, in the factor's dtype, float64 out."""
    z = rows.to(hess.dtype, copy=True)
    torch.linalg.solve_triangular(hess.mT, z.mT, upper=False, out=z.mT)
    torch.linalg.solve_triangular(hess, z.mT, upper=True, out=z.mT)
    return z.to(torch.float64)


def _refine(problem: GradientProblem, damping: float, factor: Tensor, g: Tensor, v: Tensor,
            opts: SolverOptions) -> tuple[Tensor, dict]:
    """Iterative refinement of ``v (H' + lambda I) = g`` with float64 residuals.

    Raises:
        ConvergenceError: the correction is still above ``refine_tol`` after
            ``refine_max_iter`` steps (or grows), saying by how much.
    """
    tol, max_iter = opts.refine_tol, opts.refine_max_iter
    rel = float("inf")
    for it in range(1, max_iter + 1):
        res = g.clone()
        for s0 in range(0, len(v), _HVP_CHUNK):
            rows = v[s0:s0 + _HVP_CHUNK]
            res[s0:s0 + _HVP_CHUNK] -= hessian_vector_product(
                problem.x_train, problem.probs, rows, reduced=True).add_(rows, alpha=damping)
        delta = _factor_solve(factor, res)
        v += delta
        prev, rel = rel, float((delta.norm(dim=1) / v.norm(dim=1).clamp_min(1e-300)).max())
        if rel <= tol:
            return v, {"refine_iterations": it, "refine_relative_correction": rel}
        if it > 2 and rel > prev:  # diverging: float32 cannot resolve this Hessian
            break
    raise ConvergenceError(
        f"mixed-precision refinement missed its tolerance: the last correction was {rel:.1e} of "
        f"the solution after {it} iterations (tolerance {tol:g}, {rel / tol:.1e}x off); the "
        f"Hessian plus damping {damping:g} is too ill-conditioned for a float32 factor: use "
        f"precision 'float64' (--precision float64), a larger damping or refine_max_iter")


def _eig_scales(evals: Tensor, damping: float, rcond: float | None) -> tuple[Tensor, dict]:
    """``(e + lambda)^-1/2``, truncated below ``rcond * max`` when ``rcond`` is given."""
    shifted = evals + damping
    if rcond is None:
        if shifted.min() <= shifted.max() * 1e-14:
            raise factor_failed(damping, f"smallest eigenvalue {float(shifted.min()):.1e}")
        return shifted.rsqrt(), {"min_eigenvalue": float(evals.min())}
    keep = shifted > rcond * shifted.max()
    scales = torch.where(keep, shifted.clamp_min(1e-300).rsqrt(), torch.zeros_like(shifted))
    return scales, {"rcond": rcond, "kept_eigenvalues": int(keep.sum()), "dimension": len(evals)}


def _run_eig(problem: GradientProblem, damping: float, opts: SolverOptions,
             rcond: float | None) -> SolverOutput:
    timings = {}
    t0 = time.perf_counter()
    hess = _hessian(problem)
    timings["hessian_s"] = time.perf_counter() - t0
    problem.step(1, 3, "Hessian")
    t0 = time.perf_counter()
    evals, evecs = torch.linalg.eigh(hess, UPLO="U")
    del hess
    scales, info = _eig_scales(evals, damping, rcond)
    w_test = (problem.grads("test") @ evecs) * scales
    w_train = (problem.grads("train") @ evecs) * scales
    timings["factor_solve_s"] = time.perf_counter() - t0
    problem.step(2, 3, "eigendecomposition")
    out = _scores_from_whitened(problem, w_test, w_train, info, timings)
    problem.step(3, 3, "scores")
    return out


SOLVERS.register("cholesky", SolverSpec(
    "cholesky", _run_cholesky,
    "Cholesky of H + damping*I in place, one triangular solve for all gradients (default)"))
SOLVERS.register("eigh", SolverSpec(
    "eigh", lambda p, lam, o: _run_eig(p, lam, o, None),
    "one eigendecomposition of H; slower than cholesky, same scores"))
SOLVERS.register("pinv", SolverSpec(
    "pinv", lambda p, lam, o: _run_eig(p, lam, o, o.rcond),
    "the paper's truncated pseudo-inverse: eigenvalues below rcond*max dropped"))


# --- conjugate gradients ---------------------------------------------------------------


def kronecker_preconditioner(x_aug: Tensor, probs: Tensor, damping: float) -> Callable[[Tensor], Tensor]:
    """``(E[A] (x) E[x~ x~^T] + lambda I)^-1`` in sum-zero coordinates (a K-FAC approximation).

    Args:
        x_aug: ``[n, D]``.
        probs: ``[n, C]``.
        damping: ``lambda``.

    Returns:
        A function ``[k, P] -> [k, P]``.
    """
    n, dim = x_aug.shape
    q = sum_zero_basis(probs.shape[1]).to(probs)
    mean_a = torch.diag(probs.mean(0)) - probs.T @ probs / n
    ea, ua = torch.linalg.eigh(q.T @ mean_a @ q)
    es, us = torch.linalg.eigh(x_aug.T @ x_aug / n)
    denom = ea.clamp_min(0)[:, None] * es.clamp_min(0)[None, :] + damping
    denom = denom.clamp_min(float(denom.max()) * 1e-12)  # zero damping, rank-deficient x

    def apply(r: Tensor) -> Tensor:
        k, c = len(r), len(ea)
        t = (r.reshape(k * c, dim) @ us).reshape(k, c, dim)  # 2-D GEMM over the long axis
        t = (ua.T @ t) / denom
        return (ua @ t).reshape(k * c, dim).matmul(us.T).reshape(k, -1)

    return apply


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], rhs: Tensor,
                       precond: Callable[[Tensor], Tensor] | None = None, tol: float = 1e-10,
                       max_iter: int = 500) -> tuple[Tensor, dict]:
    """Solve ``A x = b`` for every row ``b`` of ``rhs`` at once (A symmetric positive definite).

    Each row runs its own (preconditioned) CG recursion; rows stop when
    ``||r|| <= tol * ||b||``.

    Args:
        matvec: ``[k, P] -> [k, P]``, rows mapped by ``A``.
        rhs: ``[k, P]``.
        precond: approximate ``A^-1`` with the same signature.
        tol: relative residual.
        max_iter: iterations at most.

    Returns:
        ``x`` of shape ``[k, P]`` and ``{"iterations", "max_relative_residual", "converged"}``.
    """
    precond = precond or (lambda r: r)
    out = torch.zeros_like(rhs)
    bnorm = rhs.norm(dim=1).clamp_min(1e-300)
    # the arrays hold only rows still running; finished rows go to ``out`` and are dropped
    idx, x, r = torch.arange(len(rhs)), torch.zeros_like(rhs), rhs.clone()
    z = precond(r)
    p, rz = z.clone(), (r * z).sum(1)
    it, worst = 0, 0.0
    while True:
        rel = r.norm(dim=1) / bnorm[idx]
        done = rel <= tol
        if bool(done.any()) or it == max_iter:
            finished = done if it < max_iter else torch.ones_like(done)
            out[idx[finished]] = x[finished]
            worst = max(worst, float(rel[finished].max())) if bool(finished.any()) else worst
            keep = ~finished
            idx, x, r, p, rz = idx[keep], x[keep], r[keep], p[keep], rz[keep]
        if len(idx) == 0:
            break
        it += 1
        ap = matvec(p)
        alpha = rz / (p * ap).sum(1)
        x += alpha[:, None] * p
        r -= alpha[:, None] * ap
        z = precond(r)
        rz_new = (r * z).sum(1)
        p = z + (rz_new / rz)[:, None] * p
        rz = rz_new
    return out, {"iterations": it, "max_relative_residual": worst, "converged": worst <= tol}


def _cg_solver(problem: GradientProblem, damping: float,
               opts: SolverOptions) -> Callable[[Tensor], tuple[Tensor, dict]]:
    """``g -> (H' + lambda I)^-1 g`` for a batch of rows, raising when CG does not converge."""
    precond = kronecker_preconditioner(problem.x_train, problem.probs, damping)
    tol, max_iter = opts.cg_tol, opts.cg_max_iter

    def matvec(v: Tensor) -> Tensor:
        return hessian_vector_product(problem.x_train, problem.probs, v, reduced=True) + damping * v

    def solve(rhs: Tensor) -> tuple[Tensor, dict]:
        sol, info = conjugate_gradient(matvec, rhs, precond, tol, max_iter)
        if not info["converged"]:
            raise ConvergenceError(
                f"conjugate gradients reached relative residual {info['max_relative_residual']:.1e} "
                f"> {tol:g} after {max_iter} iterations; raise cg_max_iter (--cg-max-iter) or "
                f"the damping (now {damping:g})")
        return sol, info

    return solve


def _cg_scores(problem: GradientProblem, split: str, solve: Callable, batch: int,
               info: dict, steps: tuple[int, int] = (0, 0)) -> tuple[Tensor | None, Tensor]:
    """Scores of every ``split`` target against all training images, ``batch`` at a time.

    ``steps``: the batches done before these and all batches, for progress events.

    Returns:
        The ``[n, n]`` training scores (``None`` for test targets, whose rows went to the
        sink) and ``[k]`` ``-g^T (H' + lambda I)^-1 g`` (self-influence).
    """
    size = len(problem.r_train if split == "train" else problem.r_test)
    scores = torch.empty(size, len(problem.r_train), dtype=torch.float64) if split == "train" else None
    own = torch.empty(size, dtype=torch.float64)
    for s in range(0, size, batch):
        rhs = problem.grads(split, slice(s, s + batch))
        sol, step = solve(rhs)
        if scores is None:
            problem.full_sink().test(s, problem.dot_train(sol).neg_())
        else:
            scores[s:s + batch] = -problem.dot_train(sol)
        own[s:s + batch] = -(rhs * sol).sum(1)
        info["cg_iterations"] = max(info.get("cg_iterations", 0), step["iterations"])
        info["cg_max_relative_residual"] = max(info.get("cg_max_relative_residual", 0.0),
                                               step["max_relative_residual"])
        problem.step(steps[0] + s // batch + 1, steps[1], f"conjugate gradients, {split} targets")
    return scores, own


def _run_cg(problem: GradientProblem, damping: float, opts: SolverOptions) -> SolverOutput:
    timings, info = {}, {"cg_tol": opts.cg_tol}
    problem.sink = problem.full_sink()  # one sink for the test batches and the training matrix
    solve, batch = _cg_solver(problem, damping, opts), opts.cg_batch
    m, n = len(problem.r_test), len(problem.r_train)
    test_batches = -(-m // batch)
    total = test_batches + (-(-n // batch) if problem.train_targets else 0)
    t0 = time.perf_counter()
    _cg_scores(problem, "test", solve, batch, info, (0, total))
    timings["solve_test_s"] = time.perf_counter() - t0
    if not problem.train_targets:
        return SolverOutput(None, info, timings)
    t0 = time.perf_counter()
    train_scores, own = _cg_scores(problem, "train", solve, batch, info, (test_batches, total))
    assert train_scores is not None
    # exact in theory; CG leaves ~tol asymmetry. n x n: the matrix-free path's one square
    problem.full_sink().train(0, (train_scores + train_scores.T) / 2)
    timings["solve_train_s"] = time.perf_counter() - t0
    return SolverOutput(own, info, timings)


SOLVERS.register("cg", SolverSpec(
    "cg", _run_cg,
    "matrix-free conjugate gradients on Hessian-vector products (K-FAC preconditioned), "
    "for heads too large to hold H"))

