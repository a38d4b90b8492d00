"""Which source for my data: rank source models by a cheap head-only probe.

For each available source, the frozen backbone's pooled features of the target's
training pool are computed once; then, for a few seeds, a multinomial logistic
regression (the head-only setting, fitted to convergence with L-BFGS instead of SGD
epochs) is fitted on ``n`` class-balanced images and scored on a class-balanced
validation set held out of the training pool. The test split is never read: choosing a
source on test accuracy would make every later comparison optimistic.

The validation images are the same for every source and disjoint from every seed's
training images (:func:`robust_transfer.data.subsets.split_validation`), so scores are
paired across sources by seed; the ranking's intervals are t-intervals over seeds of the
paired difference to the best source.

A probe measures linear separability of the frozen features, the head-only setting of
the paper. With blocks unfrozen, fine-tuning can reorder the sources:
``benchmarks/bench_recommend.py`` compares the ranking with a fine-tuning study and
reports where the probe misleads.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from robust_transfer.analysis.intervals import mean_t_interval
from robust_transfer.data import balanced_subset, default_policy, load_dataset
from robust_transfer.data.datasets import ImageArrays
from robust_transfer.data.subsets import split_validation
from robust_transfer.errors import ConfigError

DEFAULT_SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class SourceScore:
    """One source's probe accuracies on the validation set.

    Attributes:
        name: the source (zoo name or path).
        accs: validation accuracy per seed, in the order of ``Recommendation.seeds``.
        mean: mean over seeds.
        lo, hi: 95% t-interval of the mean (NaN with one seed).
        gap, gap_lo, gap_hi: this source minus the best source, paired by seed, with its
            95% t-interval (0 for the best source itself).
        info: the source's metadata (arch, norm, eps) where known.
    """

    name: str
    accs: tuple[float, ...]
    mean: float
    lo: float
    hi: float
    gap: float
    gap_lo: float
    gap_hi: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recommendation:
    """Sources ranked by probe accuracy (best first) and how sure the ranking is."""

    target: str
    n: int
    seeds: tuple[int, ...]
    val_images: int
    scores: tuple[SourceScore, ...]
    skipped: dict[str, str]

    @property
    def best(self) -> SourceScore:
        return self.scores[0]

    def tied_with_best(self) -> list[str]:
        """Sources whose paired gap to the best has an interval that includes 0."""
        return [s.name for s in self.scores[1:] if not s.gap_hi < 0]

    def verdict(self) -> str:
        """One sentence: the recommended source and how sure the probe is."""
        best = self.best
        if len(self.scores) == 1:
            return f"only {best.name} can take {self.target}; nothing to compare"
        tied = self.tied_with_best()
        head = (f"{best.name} ({best.mean:.1%} validation accuracy with a head-only probe on "
                f"{self.n} images, {len(self.seeds)} seeds)")
        if not tied:
            runner = self.scores[1]
            return (f"use {head}: ahead of every other source, the runner-up {runner.name} by "
                    f"{-runner.gap:.1%} (95% CI {-runner.gap_hi:.1%} to {-runner.gap_lo:.1%})")
        if len(self.seeds) < 2:
            return f"{head} ranks first, but one seed gives no interval: use --seeds 3 or more"
        return (f"{head} ranks first, but is not distinguishable from {', '.join(tied)} "
                "(their paired 95% intervals include 0): any of them is a reasonable choice")

    def to_rows(self) -> list[dict[str, Any]]:
        return [{"rank": i + 1, "source": s.name, "mean": s.mean, "lo": s.lo, "hi": s.hi,
                 "gap_to_best": s.gap, "gap_lo": s.gap_lo, "gap_hi": s.gap_hi,
                 "seeds": len(s.accs), **{k: s.info.get(k) for k in ("arch", "norm", "eps")}}
                for i, s in enumerate(self.scores)]


def _too_large(n: int, name: str, total: int, val_size: int, pool: int) -> str:
    if n >= total:  # no room at all: the held-out count is beside the point
        hold = default_hold_out(total)
        return (f"n={n} leaves no validation images: {name} has {total} training images and "
                f"the probes are scored on images held out of them; use n <= {total - hold} "
                f"(beside the default {hold} held out) or a smaller --val-images")
    return (f"n={n} does not fit beside the {val_size} validation images held out: {name} has "
            f"{total} training images, {pool} left to train on; use n <= {pool} or fewer "
            f"--val-images")


def default_hold_out(pool_size: int) -> int:
    """The validation images held out when n leaves room: a quarter, at most 1,000."""
    return min(1000, pool_size // 4)


def default_val_images(pool_size: int, n: int) -> int:
    """A quarter of the training pool, at most 1,000 images, leaving at least ``n`` to train."""
    return max(0, min(default_hold_out(pool_size), pool_size - n))


def recommend(target: str | ImageArrays, n: int, sources: list[str] | None = None, *,
              seeds: tuple[int, ...] | list[int] = DEFAULT_SEEDS, val_images: int | None = None,
              data_root: str | os.PathLike | None = None, device: str = "cpu",
              C: float = 1.0) -> Recommendation:
    """Rank source models for ``target`` by a head-only probe on ``n`` images.

    Args:
        target: a dataset name, ``folder:PATH``, or the training split as ImageArrays.
        n: training images per probe (class-balanced, seeded).
        sources: zoo names or checkpoint paths (default: every source on this machine).
        seeds: one probe per seed; paired across sources.
        val_images: held-out validation images (default :func:`default_val_images`).
        data_root: dataset folder.
        device: where feature extraction runs.
        C: inverse L2 strength of the logistic regression (on standardised features).

    Returns:
        The :class:`Recommendation`, best source first.

    Raises:
        ConfigError: no sources, no source that can take the target, ``n`` or the
            validation set too large for the training pool, fewer images than classes, or
            a target of one class.
    """
    train = target if isinstance(target, ImageArrays) else load_dataset(target, "train", data_root)
    name = train.info.name
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ConfigError("recommend needs at least one seed")
    labels = train.labels.numpy()
    if len(np.unique(labels)) < 2:  # a probe of one class is 100% whatever the source
        raise ConfigError(f"{name} has images of one class only; ranking sources needs a "
                          "target with at least two classes")
    val_size = default_val_images(len(labels), n) if val_images is None else int(val_images)
    pool, val = split_validation(labels, val_size, name)
    classes = train.info.num_classes
    if n < classes:
        raise ConfigError(f"n={n} is fewer than {name}'s {classes} classes: a probe needs at "
                          "least one image per class")
    if n > len(pool):
        raise ConfigError(_too_large(n, name, len(labels), val_size, len(pool)))
    subsets = [pool[balanced_subset(labels[pool], n, s, name)] for s in seeds]
    needed = np.unique(np.concatenate([val, *subsets]))
    models, skipped = _usable_sources(sources, train)
    raw: dict[str, tuple[list[float], dict[str, Any]]] = {}
    for label, (model, info) in models.items():
        feats = _pooled_features(model, train, needed, device)
        row = {int(i): k for k, i in enumerate(needed)}
        accs = [_probe(feats, labels, [row[int(i)] for i in idx], [row[int(i)] for i in val],
                       needed, C) for idx in subsets]
        raw[label] = (accs, info)
    return Recommendation(name, n, seeds, len(val), _rank(raw), skipped)


def _usable_sources(sources: list[str] | None, train: ImageArrays) -> tuple[dict, dict[str, str]]:
    from robust_transfer.models.sources import load_source
    from robust_transfer.models.zoo import zoo_listing

    names = sources if sources is not None else [r["name"] for r in zoo_listing() if r["local"]]
    if not names:
        raise ConfigError("no source models are available: name them (zoo names or checkpoint "
                          "paths), or fetch one with 'robust-transfer zoo fetch NAME --download'")
    usable, skipped = {}, {}
    for name in names:
        model = load_source(name)
        meta = model.source_record.to_dict()
        reason = _cannot_take(model, train)
        if reason:
            skipped[name] = reason
            continue
        usable[name] = (model, {k: meta.get(k) for k in ("arch", "norm", "eps", "training")})
    if not usable:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise ConfigError(f"no source can take {train.info.name}: {why}")
    return usable, skipped


def _cannot_take(model, train: ImageArrays) -> str | None:
    """Why ``model`` cannot take ``train``'s images (``None`` when it can)."""
    if model.channels == 1 and not train.info.grayscale_like:
        return (f"it takes 1-channel images and {train.info.name} is colour "
                "(its colour would be thrown away)")
    if min(train.images.shape[-2:]) > 4 * model.input_size:
        return (f"it takes {model.input_size} px inputs and {train.info.name}'s images are "
                f"{train.images.shape[-1]} px (more than 4x the detail would be thrown away)")
    return None


def _pooled_features(model, train: ImageArrays, indices: np.ndarray, device: str) -> np.ndarray:
    from robust_transfer.engine.training import resolve_device
    from robust_transfer.engine.transfer import prefix_outputs

    dev = resolve_device(device)
    model = model.to(dev)
    policy = default_policy(train.info, model.channels, model.input_size, augment=False)
    depth = len(model.stages())
    out = prefix_outputs(model, train.images[torch.as_tensor(indices)], policy, depth, True, dev)
    return out.double().numpy()


def _probe(feats: np.ndarray, labels: np.ndarray, train_rows: list[int], val_rows: list[int],
           needed: np.ndarray, C: float) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x_train, x_val = feats[train_rows], feats[val_rows]
    y_train, y_val = labels[needed[train_rows]], labels[needed[val_rows]]
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8  # fitted on the training images only
    clf = LogisticRegression(C=C, max_iter=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit((x_train - mean) / std, y_train)
    return float((clf.predict((x_val - mean) / std) == y_val).mean())


def _rank(raw: dict[str, tuple[list[float], dict[str, Any]]]) -> tuple[SourceScore, ...]:
    means = {k: float(np.mean(v[0])) for k, v in raw.items()}
    order = sorted(raw, key=lambda k: (-means[k], k))
    best = np.asarray(raw[order[0]][0])
    scores = []
    for name in order:
        accs = np.asarray(raw[name][0])
        gap = accs - best
        gap_lo, gap_hi = (0.0, 0.0) if name == order[0] else mean_t_interval(gap)[1:]
        _, lo, hi = mean_t_interval(accs)
        lo, hi = max(lo, 0.0), min(hi, 1.0)  # an accuracy's interval stays in [0, 1] (NaN stays NaN)
        scores.append(SourceScore(name, tuple(float(a) for a in accs), means[name], lo, hi,
                                  float(gap.mean()), gap_lo, gap_hi, raw[name][1]))
    return tuple(scores)
