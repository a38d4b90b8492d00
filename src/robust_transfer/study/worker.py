"""One run, as executed by any executor: config in, :class:`RunOutcome` out, never raises.

Workers only compute. They load each source and dataset once per process, fine-tune, and
return the outcome to the driver, which alone writes the store. Any exception a run
raises (out of memory, bad data) becomes a ``failed`` outcome carrying its traceback.
"""

from __future__ import annotations

import functools
import os
import socket
import time
import traceback
from dataclasses import dataclass, field

import torch

from robust_transfer.engine.features import DiskFeatureStore
from robust_transfer.engine.training import resolve_device
from robust_transfer.engine.transfer import FeatureStore, FinetuneResult, finetune
from robust_transfer.models.arch import TransferModel
from robust_transfer.models.sources import SourceRecord, load_source
from robust_transfer.study.resolve import load_split
from robust_transfer.study.spec import RunConfig
from robust_transfer.study.store import RunOutcome

MAX_ERROR_CHARS = 4000


@dataclass(frozen=True)
class RunContext:
    """What every run of a study shares (sent to each worker once).

    Attributes:
        sources: each source's record by label, as the driver resolved and verified it
            (workers load it through :func:`~robust_transfer.models.sources.load_source`,
            which refuses weights whose sha256 has changed since).
        data_root: dataset folder.
        device: torch device for runs (``auto``: CUDA when visible).
        threads: torch CPU threads per run (fixed, so results do not depend on the executor).
        feature_cache: folder of the on-disk feature cache, or ``None`` for none.
        feature_cache_budget: the most bytes that cache may hold (``None``: no limit).
        checkpoint_dir: a folder where each run saves its training state after every
            epoch (``<run_id>.pt``) and resumes from it when rerun (the SLURM executor's
            requeues); ``None``: no checkpoints.
    """

    sources: dict[str, SourceRecord]
    data_root: str
    device: str = "auto"
    threads: int = 1
    feature_cache: str | None = None
    feature_cache_budget: int | None = None
    checkpoint_dir: str | None = None

    def checkpoint(self, run_id: str) -> str | None:
        """The run's epoch checkpoint file, or ``None`` without a checkpoint folder."""
        return os.path.join(self.checkpoint_dir, f"{run_id}.pt") if self.checkpoint_dir else None


@dataclass(frozen=True)
class RunTask:
    """A run to execute: its id and resolved config."""

    run_id: str
    config: RunConfig = field(hash=False)


def execute_run(task: RunTask, ctx: RunContext) -> RunOutcome:
    """Fine-tune one run; failures are returned, not raised.

    Args:
        task: the run.
        ctx: study-wide settings.

    Returns:
        A ``finished`` outcome with the epoch history, or a ``failed`` one with the error.
    """
    started = time.time()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(ctx.threads)
    try:
        return _finetune(task, ctx, started)
    except Exception as err:  # failure isolation: one bad run must not stop the study
        return RunOutcome(task.run_id, "failed", started, time.time(), *_where(ctx),
                          error=_error_text(err))
    finally:
        torch.set_num_threads(previous_threads)


def finetune_config(run: RunConfig, model: TransferModel, source_sha256: str | None,
                    data_root: str | None, device: str = "auto",
                    feature_store: FeatureStore | None = None,
                    checkpoint: str | None = None) -> FinetuneResult:
    """Fine-tune ``model`` as the run says (what a study run and a replay do).

    Args:
        run: the run's config.
        model: its source model (not modified).
        source_sha256: identifies the source's weights for the feature store.
        data_root: dataset folder.
        device: torch device.
        feature_store: shares frozen-prefix outputs between runs.
        checkpoint: the run's epoch checkpoint file (saved each epoch, resumed from).

    Returns:
        The :class:`~robust_transfer.engine.transfer.FinetuneResult`.
    """
    train = load_split(run.target, "train", data_root)
    test = load_split(run.target, "test", data_root)
    return finetune(model, train, test, n=run.n, unfrozen=run.unfrozen_blocks, epochs=run.epochs,
                    seed=run.seed, recipe=run.recipe, device=device,
                    source_id=source_sha256 or "", feature_store=feature_store,
                    checkpoint=checkpoint)


def _finetune(task: RunTask, ctx: RunContext, started: float) -> RunOutcome:
    record = ctx.sources[task.config.source]
    store = (DiskFeatureStore(ctx.feature_cache, max_bytes=ctx.feature_cache_budget)
             if ctx.feature_cache else None)
    result = finetune_config(task.config, cached_source(record), record.sha256, ctx.data_root,
                             ctx.device, store, ctx.checkpoint(task.run_id))
    history = tuple(m.to_dict() for m in result.history)
    return RunOutcome(task.run_id, "finished", started, time.time(), *_where(ctx),
                      n=result.n_train, cached_prefix=result.cached_prefix, history=history)


def planned_cache_bytes(resolved, runs=None) -> dict[tuple, int]:
    """Bytes each feature-cache key of a study will hold at most, before any run starts.

    A key is (source sha256, target, split, resolution, depth, pooled, dtype). The test
    split holds every test image; the training split at most the union of the runs'
    subsets, which nest per seed: the sum over seeds of the largest n, at most the split.
    Which splits a run caches comes from :func:`robust_transfer.engine.transfer.cache_plan`.

    Args:
        resolved: a :class:`~.resolve.ResolvedStudy`.
        runs: the runs to plan (default: all of the spec's).

    Returns:
        ``key tuple -> bytes``; sources of unknown architecture are left out.
    """
    from robust_transfer.data import dataset_info, default_policy
    from robust_transfer.engine.transfer import cache_plan

    planned: dict[tuple, int] = {}
    train_rows: dict[tuple, dict[int, int]] = {}  # key -> seed -> largest n (subsets nest)
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
        key = (source.sha256, run.target, size, plan.depth, plan.pooled, run.recipe.feature_dtype)
        if plan.test:
            planned[key[:2] + ("test",) + key[2:]] = target.test_size * per_image
        if plan.train:
            seeds = train_rows.setdefault(key[:2] + ("train",) + key[2:], {})
            seeds[run.seed] = max(seeds.get(run.seed, 0), n)
            rows = min(target.train_size or n, sum(seeds.values()))
            planned[key[:2] + ("train",) + key[2:]] = rows * per_image
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
    import shutil
    from pathlib import Path

    from robust_transfer.engine.features import (
        CACHE_ADVICE,
        CacheBudgetError,
        disk_bytes,
        format_bytes,
    )

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
        parts = ", ".join(f"{k[1]} {k[2]} split of source {k[0][:8]} at depth {k[4]} in {k[6]}: "
                          f"{format_bytes(v)}"
                          for k, v in biggest)
        raise CacheBudgetError(
            f"the feature cache of this study needs up to {format_bytes(total)} (largest: "
            f"{parts}), more than {what}: {CACHE_ADVICE}")
    return total


@functools.lru_cache(maxsize=64)
def _bytes_per_image(arch: str, unfrozen: str, size: int, dtype: str) -> int:
    from robust_transfer.engine.transfer import prefix_bytes_per_image
    from robust_transfer.models import create_model

    with torch.device("meta"):  # the structure only: free even for ResNet-50
        model = create_model(arch, 10, input_size=size)
    return prefix_bytes_per_image(model, unfrozen, size, dtype)


@functools.lru_cache(maxsize=4)
def cached_source(record: SourceRecord) -> TransferModel:
    """The source model, read (and its sha256 checked) once per worker process.

    Records hash by kind, name, path, sha256 and the facts, not by their metadata.
    """
    return load_source(record)


def _where(ctx: RunContext) -> tuple[str, str, str]:
    return socket.gethostname(), str(os.getpid()), str(resolve_device(ctx.device))


def _error_text(err: BaseException) -> str:
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    head = f"{type(err).__name__}: {err}"
    # the first line says what happened; the (trimmed) traceback says where
    return (head + "\n" + text[-MAX_ERROR_CHARS:]).strip()
