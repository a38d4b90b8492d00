"""Softmax cross-entropy on a linear head: per-example gradients, closed-form Hessian, HVPs.

Parameter order. The head is ``theta = [W | b]``, a ``[C, D]`` matrix with ``D = d + 1``
(the bias is the last column, matching the augmented input ``x~ = [x; 1]``), flattened
class-major: ``theta[c * D + j] = W[c, j]`` for ``j < d`` and ``b[c]`` for ``j = d``. In this
order the per-example gradient is ``(p - y) (x) x~`` and the Hessian of the mean loss is

    H = (1/n) sum_i (diag(p_i) - p_i p_i^T) (x) x~_i x~_i^T.

PyTorch orders ``nn.Linear`` parameters as ``[W.flatten(), b]``;
:func:`torch_order_permutation` converts between the two.

Reduced coordinates. Softmax is unchanged by adding one vector to every class's row, so
``H`` has the null space ``{1_C (x) v}`` of dimension ``D = d + 1`` and every gradient is
orthogonal to it (``sum_c (p - y)_c = 0``). With ``Q`` an orthonormal basis of the
sum-zero vectors in ``R^C`` (``[C, C-1]``), ``H = M H' M^T`` with ``M = Q (x) I_D`` and
``H' = M^T H M``, so ``g^T (H + lambda I)^-1 g~ = (M^T g)^T (H' + lambda I)^-1 (M^T g~)``
exactly, for any ``lambda`` (and for pseudo-inverses). Solving in these ``(C-1) D``
coordinates is cheaper and leaves only the null space the features themselves cause.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def augment(features: Tensor) -> Tensor:
    """Append a constant 1 to each feature vector, in float64.

    Args:
        features: ``[n, d]``.

    Returns:
        ``x~`` of shape ``[n, d + 1]``.
    """
    x = features.to(torch.float64)
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64, device=x.device)], dim=1)


def head_probs(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Softmax probabilities of the head, in float64.

    Args:
        features: ``[n, d]``.
        weight: ``[C, d]``.
        bias: ``[C]``.

    Returns:
        ``[n, C]`` probabilities.
    """
    logits = features.to(torch.float64) @ weight.to(torch.float64).T + bias.to(torch.float64)
    return torch.softmax(logits, dim=1)


def sum_zero_basis(num_classes: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Orthonormal basis of ``{v in R^C : sum(v) = 0}``: the Helmert vectors.

    Column ``k`` is ``(1, ..., 1, -(k+1), 0, ..., 0) / sqrt((k+1)(k+2))`` with ``k+1`` ones.

    Args:
        num_classes: ``C >= 2``.

    Returns:
        ``Q`` of shape ``[C, C-1]`` with ``Q^T Q = I`` and ``Q^T 1 = 0``.
    """
    row = torch.arange(num_classes, dtype=dtype)[:, None]
    k = torch.arange(1, num_classes, dtype=dtype)[None, :]  # k + 1 of the docstring
    q = (row < k).to(dtype) - k * (row == k).to(dtype)
    return q / torch.sqrt(k * (k + 1))


def to_sum_zero(r: Tensor) -> Tensor:
    """``r @ Q`` along the last (class) axis in ``O(C)``, using the Helmert structure.

    Args:
        r: ``[..., C]``.

    Returns:
        ``[..., C-1]``: ``(Q^T r)_k = (r_0 + ... + r_k - (k+1) r_{k+1}) / sqrt((k+1)(k+2))``.
    """
    c = r.shape[-1]
    k = torch.arange(1, c, dtype=r.dtype, device=r.device)
    return (r.cumsum(-1)[..., :-1] - k * r[..., 1:]) / torch.sqrt(k * (k + 1))


def from_sum_zero(u: Tensor) -> Tensor:
    """``u @ Q^T`` along the last axis in ``O(C)``: back from sum-zero coordinates.

    Args:
        u: ``[..., C-1]``.

    Returns:
        ``[..., C]``, summing to zero.
    """
    c = u.shape[-1] + 1
    k = torch.arange(1, c, dtype=u.dtype, device=u.device)
    su = u / torch.sqrt(k * (k + 1))
    # row i gets sum_{k >= i} su_k from the ones above the diagonal, minus i * su_i
    tail = su.flip(-1).cumsum(-1).flip(-1)
    zero = torch.zeros_like(u[..., :1])
    return torch.cat([tail, zero], -1) - torch.cat([zero, k * su], -1)


def residuals(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor,
              reduced: bool = False) -> Tensor:
    """``p - y`` per example, the class factor of the per-example gradient.

    Args:
        features: ``[n, d]``.
        labels: ``[n]`` class indices.
        weight: ``[C, d]``.
        bias: ``[C]``.
        reduced: in sum-zero coordinates (``Q^T (p - y)``).

    Returns:
        ``[n, C]`` (or ``[n, C-1]``) float64.
    """
    r = head_probs(features, weight, bias)
    r[torch.arange(len(labels)), labels.long()] -= 1.0
    return to_sum_zero(r) if reduced else r


def outer_rows(r: Tensor, x_aug: Tensor) -> Tensor:
    """Per-example gradients ``r_i (x) x~_i`` from their factors, class-major.

    Args:
        r: ``[n, K]`` residuals.
        x_aug: ``[n, D]``.

    Returns:
        ``[n, K * D]``.
    """
    return (r[:, :, None] * x_aug[:, None, :]).reshape(len(r), -1)


def per_example_grads(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor,
                      reduced: bool = False) -> Tensor:
    """Gradient of each example's cross-entropy loss w.r.t. ``[W | b]``, class-major.

    Args:
        features: ``[n, d]``.
        labels: ``[n]`` class indices.
        weight: ``[C, d]``.
        bias: ``[C]``.
        reduced: return ``M^T g`` (sum-zero coordinates, see the module docstring).

    Returns:
        ``[n, C * (d+1)]``, or ``[n, (C-1) * (d+1)]`` when ``reduced``.
    """
    return outer_rows(residuals(features, labels, weight, bias, reduced), augment(features))


def curvature_weights(probs: Tensor, reduced: bool = False) -> Tensor:
    """Per-example output curvature ``A_i = diag(p_i) - p_i p_i^T`` (or ``Q^T A_i Q``).

    Args:
        probs: ``[n, C]``.
        reduced: project onto the sum-zero coordinates.

    Returns:
        ``[n, K, K]`` with ``K = C`` (or ``C - 1`` when ``reduced``).
    """
    a = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    if reduced:
        q = sum_zero_basis(probs.shape[1]).to(probs.device)
        a = q.T @ a @ q
    return a


def last_layer_hessian(features: Tensor, weight: Tensor, bias: Tensor, reduced: bool = False,
                       sample_weight: Tensor | None = None) -> Tensor:
    """Hessian of the mean cross-entropy w.r.t. ``[W | b]`` (see :func:`hessian_from_probs`).

    Args:
        features: ``[n, d]`` training features.
        weight: ``[C, d]``.
        bias: ``[C]``.
        reduced: the ``(C-1)(d+1)`` square Hessian in sum-zero coordinates.
        sample_weight: ``[n]`` weights ``s_i`` of ``(1/n) sum_i s_i loss_i`` (default all 1);
            ``n`` stays the number of rows, which is what leave-one-out needs.

    Returns:
        ``[K * D, K * D]`` float64, class-major, ``K = C`` (or ``C - 1``), ``D = d + 1``.
    """
    probs = head_probs(features, weight, bias)
    return hessian_from_probs(augment(features), probs, reduced, sample_weight)


def hessian_from_probs(x_aug: Tensor, probs: Tensor, reduced: bool = False,
                       sample_weight: Tensor | None = None, *, mirror: bool = True,
                       dtype: torch.dtype = torch.float64) -> Tensor:
    """The Hessian from its ``K(K+1)/2`` distinct blocks, one matrix product per block row.

    Block ``(a, b)`` is ``X~^T diag(A[:, a, b]) X~ / n``. Block row ``a`` computes the blocks
    ``b >= a`` in one product, ``X~^T [A[:, a, a] X~, ..., A[:, a, K-1] X~] / n``; the blocks
    below the diagonal are their transposes. Grouping by row keeps the number of calls at
    ``K`` (small problems are dominated by per-call overhead) and the temporary at
    ``n (K - a) D`` numbers.

    Args:
        x_aug: ``[n, D]`` augmented features (:func:`augment`).
        probs: ``[n, C]`` probabilities.
        reduced: sum-zero coordinates (``K = C - 1``) instead of ``K = C``.
        sample_weight: ``[n]`` per-example weights (see :func:`last_layer_hessian`).
        mirror: fill the blocks below the diagonal too; without it only the upper block
            triangle is written (all a Cholesky of ``H^T`` or ``eigh(..., UPLO="U")`` reads)
            and the rest is left uninitialised.
        dtype: of the products and the result (curvatures are formed in float64 first).

    Returns:
        ``[K * D, K * D]``, class-major.
    """
    n, dim = x_aug.shape
    a = curvature_weights(probs.to(torch.float64), reduced)
    if sample_weight is not None:
        a = a * sample_weight.to(a)[:, None, None]
    a, x_aug = a.to(dtype), x_aug.to(dtype)
    k = a.shape[1]
    hess = torch.empty(k * dim, k * dim, dtype=dtype, device=x_aug.device)
    for i in range(k):
        weighted = (a[:, i, i:, None] * x_aug[:, None, :]).reshape(n, -1)  # [n, (K-i) D]
        row = x_aug.T @ weighted  # blocks (i, i..K-1)
        hess[i * dim:(i + 1) * dim, i * dim:] = row.div_(n)
        if mirror:
            hess[(i + 1) * dim:, i * dim:(i + 1) * dim] = row[:, dim:].T
    return hess


def hessian_vector_product(x_aug: Tensor, probs: Tensor, vectors: Tensor,
                           reduced: bool = False) -> Tensor:
    """``H v`` for a batch of vectors without forming ``H`` (matrix-free).

    ``H v = (1/n) sum_i [A_i (V x~_i)] x~_i^T`` with ``V`` the ``[K, D]`` matrix of ``v``.

    Args:
        x_aug: ``[n, D]`` augmented training features (:func:`augment`).
        probs: ``[n, C]`` training probabilities.
        vectors: ``[k, K * D]``, class-major, ``K = C`` (or ``C - 1`` when ``reduced``).
        reduced: vectors are in sum-zero coordinates.

    Returns:
        ``[k, K * D]``.
    """
    n, dim = x_aug.shape
    v = vectors.reshape(len(vectors), -1, dim)
    if reduced:
        v = from_sum_zero(v.mT).mT
    k, c = v.shape[:2]
    # 2-D products: one large GEMM instead of k thin batched ones
    u = (v.reshape(k * c, dim) @ x_aug.T).reshape(k, c, n)  # directional change of each logit
    pt = probs.T
    au = pt * u - pt * (pt * u).sum(dim=1, keepdim=True)
    hv = (au.reshape(k * c, n) @ x_aug).reshape(k, c, dim) / n
    if reduced:
        hv = to_sum_zero(hv.mT).mT
    return hv.reshape(len(vectors), -1)


def torch_order_permutation(num_classes: int, feature_dim: int) -> Tensor:
    """Index ``perm`` with ``theta_class_major = theta_torch[perm]``.

    ``theta_torch = [W.flatten(), b]`` (``nn.Linear.parameters()`` order);
    ``theta_class_major = [W | b].flatten()``. The inverse is ``torch.argsort(perm)``.

    Args:
        num_classes: ``C``.
        feature_dim: ``d``.

    Returns:
        ``[C * (d+1)]`` int64.
    """
    c, d = num_classes, feature_dim
    w_idx = torch.arange(c * d).reshape(c, d)
    b_idx = (c * d + torch.arange(c)).reshape(c, 1)
    return torch.cat([w_idx, b_idx], dim=1).reshape(-1)
