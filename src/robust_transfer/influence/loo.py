"""Leave-one-out validation of last-layer influence (Koh & Liang 2017, Fig. 2).

The influence function is a first-order prediction of what retraining without a point
does. On a linear head the loss is convex, so we can retrain exactly: fit the head to the
optimum of ``(1/n) sum_i loss_i + (lambda/2) ||theta||^2`` (the objective whose Hessian is
``H + lambda I``), remove one training point (its weight in the sum becomes 0, ``n`` stays),
refit by Newton's method warm-started at the optimum, and compare the actual change of a
test loss with the predicted ``(1/n) g_test^T (H + lambda I)^-1 g_z = -I(z, z_test) / n``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats

from robust_transfer.errors import ConfigError
from robust_transfer.influence.core import InfluenceConfig, compute_influence
from robust_transfer.influence.hessian import augment, hessian_from_probs

Tensor = torch.Tensor


def _objective(theta: Tensor, x_aug: Tensor, onehot: Tensor, weights: Tensor,
               damping: float) -> tuple[float, Tensor, Tensor]:
    """Value, gradient ``[C, D]`` and probabilities of the regularised mean loss."""
    logits = x_aug @ theta.T
    logp = torch.log_softmax(logits, dim=1)
    n = len(x_aug)
    value = -(weights * (onehot * logp).sum(1)).sum() / n + 0.5 * damping * (theta * theta).sum()
    probs = logp.exp()
    grad = ((probs - onehot) * weights[:, None]).T @ x_aug / n + damping * theta
    return float(value), grad, probs


def fit_head(features: Tensor, labels: Tensor, num_classes: int, damping: float,
             weight: Tensor | None = None, bias: Tensor | None = None,
             sample_weight: Tensor | None = None, tol: float = 1e-11,
             max_iter: int = 100) -> tuple[Tensor, Tensor, dict]:
    """Minimise ``(1/n) sum_i s_i loss_i + (lambda/2)||[W|b]||^2`` by damped Newton, float64.

    Args:
        features: ``[n, d]``.
        labels: ``[n]``.
        num_classes: ``C``.
        damping: ``lambda > 0`` (makes the problem strictly convex).
        weight, bias: starting point (default zeros).
        sample_weight: ``[n]`` the ``s_i`` (default all 1).
        tol: stop when the largest gradient entry is below it.
        max_iter: Newton steps at most.

    Returns:
        ``weight [C, d]``, ``bias [C]`` and ``{"iterations", "grad_max"}``.
    """
    if not damping > 0:
        raise ConfigError(f"leave-one-out refits need damping > 0, got {damping}")
    x = augment(features)
    n, dim = x.shape
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float64)
    s = torch.ones(n, dtype=torch.float64) if sample_weight is None else sample_weight.to(torch.float64)
    theta = torch.zeros(num_classes, dim, dtype=torch.float64)
    if weight is not None:
        if bias is None:
            raise ConfigError("fit_head: a starting weight needs its bias")
        theta = torch.cat([weight.to(torch.float64), bias.to(torch.float64)[:, None]], 1)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        value, grad, probs = _objective(theta, x, onehot, s, damping)
        if float(grad.abs().max()) < tol:
            break
        hess = hessian_from_probs(x, probs, sample_weight=s)
        hess.diagonal().add_(damping)
        step = torch.linalg.solve(hess, grad.reshape(-1)).reshape(theta.shape)
        theta = _line_search(theta, step, grad, value, (x, onehot, s, damping))
    grad_max = float(_objective(theta, x, onehot, s, damping)[1].abs().max())
    return theta[:, :-1].clone(), theta[:, -1].clone(), {"iterations": it, "grad_max": grad_max}


def _line_search(theta: Tensor, step: Tensor, grad: Tensor, value: float, args: tuple) -> Tensor:
    """Backtracking (Armijo) along the Newton direction; full steps near the optimum."""
    slope = float((grad * step).sum())
    t = 1.0
    while t > 1e-12:
        candidate = theta - t * step
        if _objective(candidate, *args)[0] <= value - 1e-4 * t * slope:
            return candidate
        t /= 2
    return theta - t * step  # rounding limits further progress: we are at the optimum


@dataclass
class LeaveOneOutResult:
    """Predicted versus actual change of one test loss when a training point is removed.

    Attributes:
        test_index: the test point.
        removed: ``[m]`` training indices removed (one at a time).
        predicted: ``[m]`` ``-I(z, z_test) / n``.
        actual: ``[m]`` test loss after retraining minus before.
        pearson, spearman: correlations of ``predicted`` and ``actual``.
        damping: ``lambda`` of both the influence and the refits.
        selection: how ``removed`` was chosen (``top``: largest ``|predicted|``, as Koh &
            Liang; ``random``).
        max_grad: largest gradient entry left by any refit (convergence).
    """

    test_index: int
    removed: np.ndarray
    predicted: np.ndarray
    actual: np.ndarray
    pearson: float
    spearman: float
    damping: float
    selection: str
    max_grad: float

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}


def leave_one_out_check(train_features: Tensor, train_labels: Tensor, test_features: Tensor,
                        test_labels: Tensor, num_classes: int, damping: float = 1e-3,
                        test_index: int = 0, num_removed: int = 30, selection: str = "top",
                        seed: int = 0) -> LeaveOneOutResult:
    """Retrain the head without each of ``num_removed`` points; correlate with influence.

    Args:
        train_features: ``[n, d]``.
        train_labels: ``[n]``.
        test_features: ``[m, d]``.
        test_labels: ``[m]``.
        num_classes: ``C``.
        damping: ``lambda`` for the influence and the L2 term of every fit.
        test_index: which test point's loss to follow.
        num_removed: training points to remove, one at a time.
        selection: ``top`` (largest predicted effect) or ``random``.
        seed: for ``random``.

    Returns:
        A :class:`LeaveOneOutResult`.
    """
    if selection not in ("top", "random"):
        raise ConfigError(f"unknown selection '{selection}'; valid: top, random")
    n = len(train_labels)
    w, b, info = fit_head(train_features, train_labels, num_classes, damping)
    xt, yt = test_features[test_index:test_index + 1], test_labels[test_index:test_index + 1]
    cfg = InfluenceConfig(damping=damping, solver="cholesky", train_targets=False, scores="full")
    scores = compute_influence(train_features, train_labels, xt, yt, w, b, cfg).scores
    assert scores is not None  # scores="full"
    predicted_all = -scores[0] / n
    removed = _select(predicted_all, num_removed, selection, seed)
    base = _test_loss(xt, yt, w, b)
    actual, max_grad = np.empty(len(removed)), info["grad_max"]
    for k, j in enumerate(removed):
        s = torch.ones(n, dtype=torch.float64)
        s[j] = 0.0
        wj, bj, info_j = fit_head(train_features, train_labels, num_classes, damping, w, b, s)
        actual[k] = _test_loss(xt, yt, wj, bj) - base
        max_grad = max(max_grad, info_j["grad_max"])
    predicted = predicted_all[removed]
    return LeaveOneOutResult(
        test_index, removed, predicted, actual, float(stats.pearsonr(predicted, actual)[0]),
        float(stats.spearmanr(predicted, actual)[0]), damping, selection, max_grad)


def _select(predicted: np.ndarray, m: int, selection: str, seed: int) -> np.ndarray:
    m = min(m, len(predicted))
    if selection == "top":
        return np.argsort(-np.abs(predicted), kind="stable")[:m]
    return np.sort(np.random.default_rng(seed).choice(len(predicted), m, replace=False))


def _test_loss(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor) -> float:
    logits = x.to(torch.float64) @ weight.T + bias
    return float(torch.nn.functional.cross_entropy(logits, y.long(), reduction="sum"))
