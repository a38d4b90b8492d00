"""Reading influence scores: top-k training images and the class-match curve (Fig. 6).

Ranking order. ``helpful`` (default) ranks the most negative ``I(z, z_test)`` first: the
training images whose up-weighting lowers the test loss most, the images the paper calls
most influential. ``harmful`` ranks the most positive first, ``abs`` the largest magnitude.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from robust_transfer.errors import ConfigError

ORDERS = ("helpful", "harmful", "abs")
_CHUNK = 256  # target rows ranked at a time


def rank_training(scores: np.ndarray, k: int, order: str = "helpful",
                  exclude_self: bool = False) -> np.ndarray:
    """Indices of the ``k`` most influential training images for each target.

    Args:
        scores: ``[m, n]`` influence of training image ``i`` on target ``t``.
        k: how many (clipped to the number of candidates).
        order: ``helpful``, ``harmful`` or ``abs`` (see the module docstring).
        exclude_self: targets are the training images themselves (``m == n``); skip the
            diagonal, where each image trivially helps itself most.

    Returns:
        ``[m, k]`` int64, most influential first; ties broken by the lower index.
    """
    if order not in ORDERS:
        raise ConfigError(f"unknown influence order '{order}'; valid: {', '.join(ORDERS)}")
    m, n = scores.shape
    if exclude_self and m != n:
        raise ConfigError(f"exclude_self needs a square train-by-train matrix, got {scores.shape}")
    k = max(0, min(k, n - int(exclude_self)))
    out = np.empty((m, k), dtype=np.int64)
    for s in range(0, m, _CHUNK):  # bounded temporaries for large score matrices
        rows = np.asarray(scores[s:s + _CHUNK], dtype=np.float64)
        key = rows.copy() if order == "helpful" else (-rows if order == "harmful" else -np.abs(rows))
        if exclude_self:
            key[np.arange(len(key)), np.arange(s, s + len(key))] = np.inf
        out[s:s + _CHUNK] = smallest_k(key, k)
    return out


def smallest_k(key: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` smallest entries of each row, smallest first.

    Equal to ``np.argsort(key, axis=1, kind="stable")[:, :k]`` (ties by the lower index)
    but with a partial selection (``argpartition``) instead of a full sort.

    Args:
        key: ``[r, n]``.
        k: ``0 <= k <= n``.

    Returns:
        ``[r, k]`` int64.
    """
    r, n = key.shape
    if k == 0 or k >= n:
        return np.argsort(key, axis=1, kind="stable")[:, :k]
    cand = np.sort(np.argpartition(key, k - 1, axis=1)[:, :k], axis=1)  # index order
    vals = np.take_along_axis(key, cand, 1)
    order = np.argsort(vals, axis=1, kind="stable")  # ties keep index order
    out = np.take_along_axis(cand, order, 1)
    # a tie at the k-th value may have let the partition pick a higher index: redo those rows
    kth = np.take_along_axis(vals, order[:, -1:], 1)
    tied = (key == kth).sum(1) != (vals == kth).sum(1)
    if tied.any():
        out[tied] = np.argsort(key[tied], axis=1, kind="stable")[:, :k]
    return out


@dataclass
class TopK:
    """Top-k helpful and harmful training images per target.

    Attributes:
        helpful, harmful: ``[m, k]`` training indices, most influential first.
        helpful_scores, harmful_scores: ``[m, k]`` their scores.
    """

    helpful: np.ndarray
    helpful_scores: np.ndarray
    harmful: np.ndarray
    harmful_scores: np.ndarray


def top_k(scores: np.ndarray, k: int = 10, exclude_self: bool = False) -> TopK:
    """The ``k`` most helpful and ``k`` most harmful training images per target.

    Args:
        scores: ``[m, n]``.
        k: images per target.
        exclude_self: see :func:`rank_training`.

    Returns:
        A :class:`TopK`.
    """
    helpful = rank_training(scores, k, "helpful", exclude_self)
    harmful = rank_training(scores, k, "harmful", exclude_self)
    return TopK(helpful, np.take_along_axis(scores, helpful, 1),
                harmful, np.take_along_axis(scores, harmful, 1))


def wilson_interval(successes: np.ndarray, trials: int,
                    confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion, from :func:`scipy.stats.binomtest`.

    Args:
        successes: counts, any shape.
        trials: number of trials (> 0).
        confidence: confidence level.

    Returns:
        ``(low, high)``, each shaped like ``successes``.
    """
    counts = np.asarray(successes)
    low, high = np.empty(counts.shape), np.empty(counts.shape)
    for idx, k in np.ndenumerate(counts):
        ci = stats.binomtest(int(k), trials).proportion_ci(confidence, method="wilson")
        low[idx], high[idx] = ci.low, ci.high
    return low, high


@dataclass
class ClassMatchCurve:
    """Share of targets whose k-th most influential training image has the target's class.

    Attributes:
        ranks: ``[K]`` 1..K.
        share: ``[K]`` the share at each rank.
        low, high: ``[K]`` Wilson 95% interval.
        n_targets: targets the shares are over.
        chance: expected share if rankings ignored the images (the class frequencies).
        targets: ``"test"`` or ``"train"``.
        order: ranking order (see :func:`rank_training`).
    """

    ranks: np.ndarray
    share: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_targets: int
    chance: float
    targets: str
    order: str

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}


def class_match_curve(scores: np.ndarray, target_labels: np.ndarray, train_labels: np.ndarray,
                      max_rank: int = 100, order: str = "helpful", exclude_self: bool = False,
                      targets: str = "test") -> ClassMatchCurve:
    """The paper's Fig. 6 curve for one model.

    Args:
        scores: ``[m, n]`` influence on each target (test, or training with ``exclude_self``).
        target_labels: ``[m]``.
        train_labels: ``[n]``.
        max_rank: largest rank k (the paper: 100), clipped to the candidates.
        order: see :func:`rank_training`.
        exclude_self: targets are the training images; skip each one's own score.
        targets: a name for the targets, stored in the curve.

    Returns:
        A :class:`ClassMatchCurve`.
    """
    if max_rank < 1:
        raise ConfigError(f"max_rank must be >= 1, got {max_rank}")
    idx = rank_training(scores, max_rank, order, exclude_self)
    return class_match_from_ranks(idx, target_labels, train_labels, order, exclude_self, targets)


def class_match_from_ranks(idx: np.ndarray, target_labels: np.ndarray, train_labels: np.ndarray,
                           order: str = "helpful", exclude_self: bool = False,
                           targets: str = "test") -> ClassMatchCurve:
    """:func:`class_match_curve` from rankings already made (e.g. streamed chunk by chunk).

    Args:
        idx: ``[m, K]`` training indices per target, most influential first
            (:func:`rank_training`'s output).
        target_labels, train_labels, order, exclude_self, targets: as
            :func:`class_match_curve`.

    Returns:
        A :class:`ClassMatchCurve` over ranks ``1..K``.
    """
    target_labels, train_labels = np.asarray(target_labels), np.asarray(train_labels)
    match = train_labels[idx] == target_labels[:, None]
    low, high = wilson_interval(match.sum(0), len(match))
    freq = np.bincount(train_labels, minlength=int(max(train_labels.max(), target_labels.max())) + 1)
    chance = float(np.mean(freq[target_labels] - int(exclude_self)) / (len(train_labels) - int(exclude_self)))
    return ClassMatchCurve(np.arange(1, idx.shape[1] + 1), match.mean(0), low, high,
                           len(match), chance, targets, order)
