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
from robust_transfer.models.base import TransferModel
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
        gpu_share: the fraction of a GPU each run holds (Ray's ``num_gpus`` when below 1,
            else one over the runs at a time on this machine's GPUs): a run on CUDA limits
            its process's allocator to it and keeps its data within
            :func:`~robust_transfer.data.loader.device_budget` of it.
        device_budget: bytes of a run's data on its GPU (``None``: half its share).
    """

    sources: dict[str, SourceRecord]
    data_root: str
    device: str = "auto"
    threads: int = 1
    feature_cache: str | None = None
    feature_cache_budget: int | None = None
    gpu_share: float = 1.0
    device_budget: int | None = None
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
                    feature_store: FeatureStore | None = None, gpu_share: float = 1.0,
                    device_budget: int | None = None,
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
        gpu_share, device_budget: see :class:`RunContext`.

    Returns:
        The :class:`~robust_transfer.engine.transfer.FinetuneResult`.
    """
    from robust_transfer.data.loader import device_budget as budget_for

    train = load_split(run.target, "train", data_root)
    test = load_split(run.target, "test", data_root)
    dev = resolve_device(device)
    keep_to_share(dev, gpu_share)
    return finetune(model, train, test, n=run.n, unfrozen=run.unfrozen_blocks, epochs=run.epochs,
                    seed=run.seed, recipe=run.recipe, device=str(dev),
                    source_id=source_sha256 or "", feature_store=feature_store,
                    data_budget=budget_for(dev, gpu_share, device_budget),
                    checkpoint=checkpoint)


def keep_to_share(device: torch.device, share: float) -> None:
    """Limit this process's CUDA allocator to ``share`` of ``device``'s memory (below 1).

    Runs sharing a GPU (Ray's ``num_gpus: 0.25``, or local worker processes) then each
    stay within their share: an allocation beyond it fails in that run alone instead of
    starving the others.
    """
    if device.type == "cuda" and share < 1:
        torch.cuda.set_per_process_memory_fraction(share, device)


def _finetune(task: RunTask, ctx: RunContext, started: float) -> RunOutcome:
    record = ctx.sources[task.config.source]
    store = (DiskFeatureStore(ctx.feature_cache, max_bytes=ctx.feature_cache_budget)
             if ctx.feature_cache else None)
    result = finetune_config(task.config, cached_source(record), record.sha256, ctx.data_root,
                             ctx.device, store, ctx.gpu_share, ctx.device_budget,
                             ctx.checkpoint(task.run_id))
    history = tuple(m.to_dict() for m in result.history)
    return RunOutcome(task.run_id, "finished", started, time.time(), *_where(ctx),
                      n=result.n_train, cached_prefix=result.cached_prefix, history=history)


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
