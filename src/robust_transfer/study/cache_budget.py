"""A study's feature cache, planned before any run starts: bytes per key, refused if too big.

The driver calls :func:`check_cache_budget` before it creates the study folder, so a
cache that cannot fit its budget (or the free disk) costs nothing. Which splits a run
caches, and at which depth, is the engine's rule
(:func:`robust_transfer.engine.transfer.cache_plan`); keys are the engine's
:class:`~robust_transfer.engine.features.PrefixKey`.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from robust_transfer.data import dataset_info, default_policy
from robust_transfer.engine.features import (
    CACHE_ADVICE,
    CacheBudgetError,
    PrefixKey,
    disk_bytes,
)
from robust_transfer.engine.transfer import cache_plan, prefix_bytes_per_image
from robust_transfer.models import build_architecture
from robust_transfer.units import format_bytes


def planned_cache_bytes(resolved, runs=None) -> dict[PrefixKey, int]:
    """Bytes each feature-cache key of a study will hold at most, before any run starts.

    Keys are :class:`~robust_transfer.engine.features.PrefixKey`, as the engine files
    them. The test
    split holds every test image; the training split at most the union of the runs'
    subsets, which nest per seed: the sum over seeds of the largest n, at most the split.
    Which splits a run caches comes from :func:`robust_transfer.engine.transfer.cache_plan`.

    Args:
        resolved: a :class:`~.resolve.ResolvedStudy`.
        runs: the runs to plan (default: all of the spec's).

    Returns:
        ``key -> bytes``; sources of unknown architecture are left out.
    """
    planned: dict[PrefixKey, int] = {}
    train_rows: dict[PrefixKey, dict[int, int]] = {}  # key -> seed -> largest n (subsets nest)
    for run in resolved.spec.runs() if runs is None else runs:
        source, target = resolved.sources[run.source], resolved.targets[run.target]
        if source.arch == "unknown" or not source.sha256:
            continue
        size = run.recipe.resolution or source.input_size
        policy = default_policy(dataset_info(run.target), 3, size, run.recipe.augment)
        per_image = _bytes_per_image(source.arch, run.unfrozen_blocks, size, run.recipe.feature_dtype)
        n = run.n or target.train_size
        plan = cache_plan(source.n_blocks, run.unfrozen_blocks, policy.augment,
                          bytes_per_image=per_image, n_train=n, n_test=target.test_size,
                          test_on_disk=True)
        key = PrefixKey(source.sha256, run.target, "test", size, plan.depth, plan.pooled,
                        run.recipe.feature_dtype)
        if plan.test:
            planned[key] = target.test_size * per_image
        if plan.train:
            train_key = replace(key, split="train")
            seeds = train_rows.setdefault(train_key, {})
            seeds[run.seed] = max(seeds.get(run.seed, 0), n)
            rows = min(target.train_size or n, sum(seeds.values()))
            planned[train_key] = rows * per_image
    return planned


def check_cache_budget(resolved, cache_dir: str | os.PathLike, budget: int | None = None) -> int:
    """Refuse, before any run starts, a feature cache that cannot fit its budget or disk.

    Args:
        resolved: the study, resolved against this machine.
        cache_dir: the cache folder (need not exist yet).
        budget: the most bytes the cache may hold (``None``: only the free disk space).

    Returns:
        The planned bytes of data (an upper bound on rows; on disk, scattered training
        rows round up to whole filesystem blocks, a few percent more).

    Raises:
        CacheBudgetError: with the largest keys and what to do instead.
    """
    planned = planned_cache_bytes(resolved)
    total = sum(planned.values())
    cache_dir = Path(cache_dir)
    held = sum(disk_bytes(p) for p in cache_dir.glob("*/*/data.npy")) if cache_dir.exists() else 0
    where = cache_dir
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    limit, what = free + held, f"the free disk space at {where} ({format_bytes(free)} free)"
    if budget is not None and budget < limit:
        limit, what = budget, f"its budget of {format_bytes(budget)}"
    if total > limit:
        biggest = sorted(planned.items(), key=lambda kv: -kv[1])[:2]
        parts = ", ".join(f"{k.describe()}: {format_bytes(v)}" for k, v in biggest)
        raise CacheBudgetError(
            f"the feature cache of this study needs up to {format_bytes(total)} (largest: "
            f"{parts}), more than {what}: {CACHE_ADVICE}")
    return total


@functools.lru_cache(maxsize=64)
def _bytes_per_image(arch: str, unfrozen: str, size: int, dtype: str) -> int:
    with torch.device("meta"):  # the structure only: free even for ResNet-50
        model = build_architecture(arch, 10, input_size=size)
    return prefix_bytes_per_image(model, unfrozen, size, dtype)
