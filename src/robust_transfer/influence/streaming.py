"""Where score rows go as a solver makes them: a full matrix, or rankings kept chunk by chunk.

Every solver and form hands its scores over in row blocks, ``sink.test(start, rows)`` for
test targets and ``sink.train(start, rows)`` for training targets. :class:`FullScores`
copies them into the ``[m, n]`` (and ``[n, n]``) matrices; :class:`StreamedRanking` keeps
only what is read from them, the top and bottom ``k`` training images of every target, the
ranks the class-match curves need and the self-influence, so its memory grows with
``(m + n) k``, not ``m n``.

Bit for bit. :func:`rank_rows` ranks each row on its own, so ranking the blocks as they
come gives exactly what ranking the assembled matrix gives (:func:`rank_matrix`), and the
full matrix is assembled from the very blocks a stream would see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robust_transfer.errors import ConfigError
from robust_transfer.influence.analysis import rank_training, smallest_k

SCORE_MODES = ("auto", "full", "stream")
_RANK_CHUNK = 256  # rows ranked at a time from a held matrix


@dataclass
class Ranking:
    """What is read from the scores: top-k images, class-match ranks, self-influence.

    Attributes:
        helpful, helpful_scores: ``[m, k]`` most helpful training images per test target
            (most negative score first) and their scores.
        harmful, harmful_scores: ``[m, k]`` most harmful (most positive first).
        test_ranks: ``[m, R]`` the ``R = max_rank`` most helpful, for the test curve.
        train_ranks: ``[n, R]`` the same with training targets, each image's own score
            skipped, or ``None`` without training targets.
        self_influence: ``[n]`` ``-g_i^T (H + lambda I)^-1 g_i``, or ``None``.
    """

    helpful: np.ndarray
    helpful_scores: np.ndarray
    harmful: np.ndarray
    harmful_scores: np.ndarray
    test_ranks: np.ndarray
    train_ranks: np.ndarray | None
    self_influence: np.ndarray | None

    @property
    def k(self) -> int:
        return self.helpful.shape[1]

    @property
    def max_rank(self) -> int:
        return self.test_ranks.shape[1]

    def cut(self, k: int, max_rank: int) -> Ranking:
        """The same ranking for a smaller ``k`` and ``max_rank`` (a prefix of each row).

        Raises:
            ConfigError: more than were kept is asked for.
        """
        if k > self.k or max_rank > self.max_rank:
            raise ConfigError(
                f"these streamed scores kept the top {self.k} images and ranks up to "
                f"{self.max_rank}; top {k} and rank {max_rank} were asked for: compute "
                f"again with top_k >= {k} and max_rank >= {max_rank}")
        return Ranking(self.helpful[:, :k], self.helpful_scores[:, :k], self.harmful[:, :k],
                       self.harmful_scores[:, :k], self.test_ranks[:, :max_rank],
                       None if self.train_ranks is None else self.train_ranks[:, :max_rank],
                       self.self_influence)


def rank_rows(rows: np.ndarray, k: int, order: str, diagonal: int | None = None) -> np.ndarray:
    """:func:`~robust_transfer.influence.analysis.rank_training` of a block of rows.

    Args:
        rows: ``[r, n]`` scores of ``r`` targets.
        k: how many per row (clipped to the candidates).
        order: ``helpful`` or ``harmful``.
        diagonal: the rows are training images ``diagonal .. diagonal + r - 1``: skip
            each one's own column; ``None``: test targets.

    Returns:
        ``[r, k]`` int64, most influential first, ties by the lower index.
    """
    if diagonal is None:
        return rank_training(rows, k, order)
    r, n = rows.shape
    key = np.array(rows, dtype=np.float64) if order == "helpful" else -np.asarray(rows, np.float64)
    key[np.arange(r), np.arange(diagonal, diagonal + r)] = np.inf
    return smallest_k(key, max(0, min(k, n - 1)))


class StreamedRanking:
    """A sink that ranks score rows as they arrive and drops them.

    Args:
        m, n: test targets and training images.
        k: top helpful and harmful images kept per test target.
        max_rank: ranks kept for the class-match curves.
        train_targets: training rows will arrive too.
    """

    def __init__(self, m: int, n: int, k: int, max_rank: int, train_targets: bool) -> None:
        self.k, self.max_rank = min(k, n), min(max_rank, n)
        self.keep = max(self.k, self.max_rank)  # helpful ranks: top-k and curve in one pass
        self.helpful = np.empty((m, self.keep), dtype=np.int64)
        self.helpful_scores = np.empty((m, self.k))
        self.harmful = np.empty((m, self.k), dtype=np.int64)
        self.harmful_scores = np.empty((m, self.k))
        self.train_ranks = np.empty((n, min(max_rank, n - 1)), dtype=np.int64) if train_targets else None
        self.own = np.empty(n) if train_targets else None

    def test(self, start: int, rows: torch.Tensor | np.ndarray) -> None:
        """Rank test targets ``start .. start + len(rows) - 1``."""
        for s in range(0, len(rows), _RANK_CHUNK):  # bounded temporaries for large blocks
            self._test(start + s, _numpy(rows[s:s + _RANK_CHUNK]))

    def _test(self, start: int, block: np.ndarray) -> None:
        stop = start + len(block)
        helpful = rank_rows(block, self.keep, "helpful")
        harmful = rank_rows(block, self.k, "harmful")
        self.helpful[start:stop] = helpful
        self.helpful_scores[start:stop] = np.take_along_axis(block, helpful[:, :self.k], 1)
        self.harmful[start:stop] = harmful
        self.harmful_scores[start:stop] = np.take_along_axis(block, harmful, 1)

    def train(self, start: int, rows: torch.Tensor | np.ndarray) -> None:
        """Rank training targets ``start ..``; keep their own scores (self-influence)."""
        for s in range(0, len(rows), _RANK_CHUNK):
            self._train(start + s, _numpy(rows[s:s + _RANK_CHUNK]))

    def _train(self, start: int, block: np.ndarray) -> None:
        if self.train_ranks is None or self.own is None:
            return
        stop = start + len(block)
        self.own[start:stop] = block[np.arange(len(block)), np.arange(start, stop)]
        self.train_ranks[start:stop] = rank_rows(block, self.train_ranks.shape[1], "helpful", start)

    def ranking(self, self_influence: np.ndarray | None = None) -> Ranking:
        """The kept rankings; ``self_influence`` overrides the diagonal (cg computes its own)."""
        own = self_influence if self_influence is not None else self.own
        return Ranking(self.helpful[:, :self.k], self.helpful_scores, self.harmful,
                       self.harmful_scores, self.helpful[:, :self.max_rank], self.train_ranks, own)


class FullScores:
    """A sink that assembles the ``[m, n]`` and ``[n, n]`` score matrices (float64)."""

    def __init__(self, m: int, n: int, train_targets: bool) -> None:
        self.scores = torch.empty(m, n, dtype=torch.float64)
        self.train_scores = torch.empty(n, n, dtype=torch.float64) if train_targets else None

    def test(self, start: int, rows: torch.Tensor) -> None:
        self.scores[start:start + len(rows)] = rows

    def train(self, start: int, rows: torch.Tensor) -> None:
        if self.train_scores is not None:
            self.train_scores[start:start + len(rows)] = rows


ScoreSink = StreamedRanking | FullScores


def held(sink: ScoreSink) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(scores, train_scores)`` when ``sink`` holds them, else ``(None, None)``."""
    return (sink.scores, sink.train_scores) if isinstance(sink, FullScores) else (None, None)


def rank_matrix(scores: np.ndarray, train_scores: np.ndarray | None, k: int, max_rank: int,
                self_influence: np.ndarray | None = None) -> Ranking:
    """The :class:`Ranking` of held score matrices: what streaming them would keep, exactly."""
    m, n = scores.shape
    sink = StreamedRanking(m, n, k, max_rank, train_scores is not None)
    for s in range(0, m, _RANK_CHUNK):
        sink.test(s, scores[s:s + _RANK_CHUNK])
    if train_scores is not None:
        for s in range(0, n, _RANK_CHUNK):
            sink.train(s, train_scores[s:s + _RANK_CHUNK])
    return sink.ranking(self_influence)


def _numpy(rows: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(rows, torch.Tensor):
        return rows.detach().to(torch.float64).cpu().numpy()
    return np.asarray(rows, dtype=np.float64)


def check_score_mode(mode: str) -> None:
    """Raise :class:`ConfigError` for an unknown ``scores`` mode."""
    if mode not in SCORE_MODES:
        raise ConfigError(f"unknown influence scores mode '{mode}'; valid: {', '.join(SCORE_MODES)}")
