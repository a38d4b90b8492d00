"""Class-balanced, seeded training subsets.

The subset depends only on (dataset name, n, seed) and the labels, never on the source
model, so robust and natural sources are compared on identical images. Subsets are
nested: for one seed, the n=100 images are among the n=200 images, which lowers the
variance of accuracy-versus-n curves.
"""

from __future__ import annotations

import zlib

import numpy as np

from robust_transfer.errors import ConfigError


def _rng(dataset: str, seed: int) -> np.random.Generator:
    # crc32 is stable across processes, unlike hash()
    return np.random.default_rng([int(seed), zlib.crc32(dataset.encode())])


def balanced_subset(labels: np.ndarray, n: int | None, seed: int, dataset: str = "", *,
                    what: str = "training images", option: str = "n") -> np.ndarray:
    """Indices of ``n`` images of a split, as balanced across classes as the data allow.

    Args:
        labels: int labels of the full split, shape ``[N]``.
        n: number of images; ``None`` means all of them (returned in order).
        seed: selects which images.
        dataset: the dataset's name, mixed into the seed.
        what, option: the images and the option asking for them, for messages
            (``"test images"``, ``"--test-n"``).

    Returns:
        Sorted int64 indices into ``labels``.

    Raises:
        ConfigError: ``n`` is not positive or exceeds the dataset's size.
    """
    labels = np.asarray(labels)
    total = len(labels)
    if n is None:
        return np.arange(total, dtype=np.int64)
    if n <= 0:
        raise ConfigError(f"number of {what} must be positive, got {n}")
    if n > total:
        raise ConfigError(
            f"asked for {n} {what} but {dataset or 'the dataset'} has only {total}; "
            f"use {option} {total} or less" + (" or 'all'" if option == "n" else "")
        )
    rng = _rng(dataset, seed)
    classes = np.unique(labels)
    class_order = rng.permutation(classes)
    per_class = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    quota = _quotas(n, class_order, {c: len(v) for c, v in per_class.items()})
    chosen = np.concatenate([per_class[c][: quota[c]] for c in classes])
    return np.sort(chosen).astype(np.int64)


def _quotas(n: int, class_order: np.ndarray, available: dict) -> dict:
    """Spread ``n`` over classes: equal shares, remainder to classes in ``class_order``,
    and shares a small class cannot fill go to the others."""
    quota = {c: 0 for c in class_order}
    left = n
    open_classes = [c for c in class_order if available[c] > 0]
    while left > 0 and open_classes:
        share, extra = divmod(left, len(open_classes))
        for i, c in enumerate(open_classes):
            take = min(share + (1 if i < extra else 0), available[c] - quota[c])
            quota[c] += take
            left -= take
        open_classes = [c for c in open_classes if quota[c] < available[c]]
    return quota


def check_validation_fit(total: int, n_classes: int, val_size: int, n: int | None,
                         dataset: str = "") -> None:
    """The rule :func:`split_validation` and a run's training subset obey, on sizes alone
    (so a study can be checked before any data is loaded).

    Args:
        total: training images of the split.
        n_classes: its classes.
        val_size: validation images held out (0 for none).
        n: training images drawn from the rest (``None``: all of it).
        dataset: its name, for messages.

    Raises:
        ConfigError: the validation set is smaller than the number of classes or leaves
            no training image, or ``n`` does not fit beside it.
    """
    name = dataset or "the dataset"
    if val_size == 0:
        return
    if val_size < n_classes or val_size >= total:
        raise ConfigError(f"a validation set of {val_size} images does not fit {name} "
                          f"({total} training images, {n_classes} classes): use between "
                          f"{n_classes} and {total - 1}")
    if n is not None and n > total - val_size:
        raise ConfigError(f"n={n} does not fit beside {val_size} validation images: {name} has "
                          f"{total} training images; use n <= {total - val_size} or fewer "
                          "val_images")


def split_validation(labels: np.ndarray, val_size: int, dataset: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Hold out a class-balanced validation set from a training split.

    The validation images depend only on (dataset, ``val_size``) and the labels, so they
    are the same for every source and seed; training subsets are then drawn from the
    rest (``pool``), so they never overlap the validation images.

    Args:
        labels: int labels of the full training split.
        val_size: validation images (0 for none).
        dataset: the dataset's name, mixed into the seed.

    Returns:
        ``(pool, val)``: sorted int64 indices into ``labels``, disjoint, covering it.

    Raises:
        ConfigError: ``val_size`` is negative, leaves no training images, or is smaller
            than the number of classes (a validation set needs one image per class).
    """
    labels = np.asarray(labels)
    total = len(labels)
    n_classes = len(np.unique(labels))
    if val_size == 0:
        return np.arange(total, dtype=np.int64), np.zeros(0, dtype=np.int64)
    check_validation_fit(total, n_classes, val_size, None, dataset)
    # a seed no training subset uses, so validation is independent of every run's images
    val = balanced_subset(labels, val_size, seed=2**32 - 1, dataset=f"{dataset}/validation")
    pool = np.setdiff1d(np.arange(total, dtype=np.int64), val)
    return pool, val
