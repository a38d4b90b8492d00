"""Interval methods across seeds, looked up by name (:data:`CI_METHODS`).

Kept free of pandas and scipy at import time, so the CLI can offer the method names
without loading the analysis stack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from robust_transfer.errors import ConfigError
from robust_transfer.registry import Registry

if TYPE_CHECKING:
    import pandas as pd

CIMethod = Callable[[np.ndarray, np.ndarray, "pd.DataFrame", "CIOptions"],
                    tuple[np.ndarray, np.ndarray]]
CI_METHODS: Registry[CIMethod] = Registry("confidence-interval method")


@dataclass(frozen=True)
class CIOptions:
    """How intervals are computed.

    Attributes:
        method: a name in :data:`CI_METHODS`: ``"t"`` (Student t over seeds) or
            ``"bootstrap"`` (percentile bootstrap over seeds; too narrow with few seeds).
        level: coverage, e.g. 0.95.
        n_boot: bootstrap resamples.
        seed: seed of the bootstrap's generator, so reports are reproducible.
    """

    method: str = "t"
    level: float = 0.95
    n_boot: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        CI_METHODS.get(self.method)  # unknown names list the valid ones
        if not 0 < self.level < 1:
            raise ConfigError(f"confidence level must be in (0, 1), got {self.level}")
        if self.n_boot < 100:
            raise ConfigError(f"n_boot must be at least 100, got {self.n_boot}")

    @property
    def percent(self) -> str:
        """The level as text, e.g. ``"95%"``."""
        return f"{self.level * 100:g}%"


def t_quantile(q: float, dof):
    """Student t quantile ``q`` at ``dof`` degrees of freedom (NaN where ``dof`` is NaN).

    ``scipy.special.stdtrit`` is what ``scipy.stats.t.ppf`` computes, without importing
    ``scipy.stats`` (a second on a busy machine).
    """
    from scipy.special import stdtrit

    return stdtrit(dof, q)


@CI_METHODS.register("t")
def _t_interval(values: np.ndarray, codes: np.ndarray, stats: pd.DataFrame,
                options: CIOptions) -> tuple[np.ndarray, np.ndarray]:
    n = stats["n_seeds"].to_numpy(dtype=float)
    dof = np.where(n > 1, n - 1, np.nan)
    half = t_quantile((1 + options.level) / 2, dof) * stats["std"].to_numpy() / np.sqrt(n)
    mean = stats["mean"].to_numpy()
    return mean - half, mean + half


@CI_METHODS.register("bootstrap")
def _bootstrap_interval(values: np.ndarray, codes: np.ndarray, stats: pd.DataFrame,
                        options: CIOptions) -> tuple[np.ndarray, np.ndarray]:
    # Groups of equal size share one set of resamples (a count matrix), so a resample's
    # mean of every group is one matrix product; each group's interval is still a plain
    # percentile bootstrap of its own values.
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=len(stats))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ordered = values[order]
    rng = np.random.default_rng(options.seed)
    lo, hi = np.full(len(stats), np.nan), np.full(len(stats), np.nan)
    for k in np.unique(sizes[sizes > 1]):
        groups = np.flatnonzero(sizes == k)
        weights = _resample_weights(rng, k, options.n_boot)
        for chunk in np.array_split(groups, max(1, len(groups) // 2000)):
            means = ordered[starts[chunk, None] + np.arange(k)] @ weights
            lo[chunk], hi[chunk] = _percentiles(means, options.level)
    return lo, hi


def _resample_weights(rng: np.random.Generator, k: int, n_boot: int) -> np.ndarray:
    """``[k, n_boot]``: how often each value is drawn in each resample, divided by k."""
    draws = rng.integers(0, k, (n_boot, k))
    counts = np.apply_along_axis(np.bincount, 1, draws, minlength=k)
    return counts.T / k


def _percentiles(means: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise ``np.quantile(..., method="linear")`` at both tails, via one partition."""
    alpha = (1 - level) / 2
    last = means.shape[1] - 1
    pos = np.array([alpha * last, (1 - alpha) * last])
    below = np.floor(pos).astype(int)
    above = np.minimum(below + 1, last)
    part = np.partition(means, np.unique(np.concatenate([below, above])), axis=1)
    frac = pos - below
    bounds = part[:, below] * (1 - frac) + part[:, above] * frac
    return bounds[:, 0], bounds[:, 1]


def mean_t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of one sample: Student t over its values (NaN bounds for one value)."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean()) if len(v) else float("nan")
    if len(v) < 2:
        return mean, float("nan"), float("nan")
    half = float(t_quantile((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return mean, mean - half, mean + half
