"""Batches from tensors held in memory, on the device that trains on them.

:class:`TensorLoader` batches uint8 images (through an input policy) or cached float
features without worker processes. Given a ``device``, it places its tensors once:

* ``"device"``: moved to the device once (on the CPU: left where they are); batches are
  indexed, resized and augmented there: no per-step copy from the host;
* ``"stream"``: they stay in host memory (a dataset, or a memory-mapped cache, larger than
  the run's device budget is never refused); each batch is gathered into a pinned staging
  buffer and copied asynchronously on a side stream, one batch ahead.

A :class:`DeviceBudget` says how many bytes a run may place on its device; loaders of one
run share it, first come first served (training images first, then test, then validation).
The batch order is drawn on the CPU from ``seed`` and the epoch, so it is the same on any
device and placement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from robust_transfer.errors import ConfigError

DEVICE_DATA_FRACTION = 0.5
"""Share of a run's device memory (its whole GPU, or its ``num_gpus`` share) that its data may fill."""

PLACEMENTS = ("device", "stream")


@dataclass
class DeviceBudget:
    """Bytes of device memory one run's data may take (images, labels, cached outputs).

    Attributes:
        total: the budget in bytes; ``None`` = unlimited (the CPU: data never moves).
        used: bytes placed so far.
        streamed: names of the tensors that did not fit and are streamed.
    """

    total: int | None
    used: int = 0
    streamed: list[str] = field(default_factory=list)

    def take(self, nbytes: int, what: str = "data") -> bool:
        """Reserve ``nbytes`` if they fit; otherwise record ``what`` as streamed."""
        if self.total is None or self.used + nbytes <= self.total:
            self.used += nbytes
            return True
        self.streamed.append(what)
        return False


def device_budget(device: torch.device | str, share: float = 1.0,
                  total: int | None = None) -> DeviceBudget:
    """A run's budget: ``total`` bytes if given, else :data:`DEVICE_DATA_FRACTION` of its share.

    Args:
        device: the run's device; on the CPU the budget is unlimited (nothing moves).
        share: the fraction of the GPU the run holds (Ray's ``num_gpus``, 1 alone).
        total: an explicit budget in bytes (e.g. from a spec's ``device_budget``).

    Raises:
        ConfigError: a share outside (0, 1] or a total that is not positive.
    """
    device = torch.device(device)
    if not 0 < share <= 1:
        raise ConfigError(f"a run's GPU share must be in (0, 1], got {share}")
    if total is not None and total <= 0:
        raise ConfigError(f"a device budget must be a positive number of bytes, got {total}")
    if device.type != "cuda":
        return DeviceBudget(total)
    if total is None:
        memory = torch.cuda.get_device_properties(device).total_memory
        total = int(memory * share * DEVICE_DATA_FRACTION)
    return DeviceBudget(total)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class TensorLoader:
    """Batches of ``(inputs, labels)`` from tensors held in memory.

    Args:
        data: uint8 images ``[N, C, H, W]`` or float features ``[N, ...]``.
        labels: int64 ``[N]``.
        batch_size: examples per batch.
        shuffle: reshuffle every epoch (seeded by ``seed`` and the epoch number).
        transform: maps a batch of ``data`` to model inputs (e.g. ``policy.train_batch``),
            on the batch's device.
        seed: shuffling seed.
        rank, world_size: shard for distributed training (each rank sees the same number
            of batches; default from ``torch.distributed`` when initialised).
        device: where batches are yielded; ``None``: where ``data`` is (the training loop
            then moves each batch).
        budget: the run's :class:`DeviceBudget` (default: unlimited); ``data`` and
            ``labels`` are placed on ``device`` if they fit, else streamed.
        name: what ``data`` is, for :attr:`DeviceBudget.streamed`.
    """

    def __init__(self, data: torch.Tensor, labels: torch.Tensor, batch_size: int = 128,
                 shuffle: bool = False, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 device: torch.device | str | None = None, budget: DeviceBudget | None = None,
                 name: str = "data") -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        self.batch_size, self.shuffle, self.transform, self.seed = batch_size, shuffle, transform, seed
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        self.world_size = world_size if world_size is not None else (
            dist.get_world_size() if distributed else 1)
        self.epoch = 0
        self.device = torch.device(device) if device is not None else data.device
        budget = budget if budget is not None else DeviceBudget(None)
        self.placement = "device" if budget.take(nbytes(data) + nbytes(labels), name) else "stream"
        if self.placement == "device":
            data, labels = data.to(self.device), labels.to(self.device)
        self.data, self.labels = data, labels

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            idx = torch.randperm(n, generator=gen)
        else:
            idx = torch.arange(n)
        if self.world_size > 1:  # equal shards: pad by wrapping, like DistributedSampler
            per = math.ceil(n / self.world_size)
            idx = torch.cat([idx, idx[: per * self.world_size - n]])[self.rank::self.world_size]
        return idx

    def __len__(self) -> int:
        n = math.ceil(len(self.labels) / self.world_size)
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        if self.placement == "device":
            idx = idx.to(self.data.device)  # one small copy per epoch
            for start in range(0, len(idx), self.batch_size):
                b = idx[start: start + self.batch_size]
                yield self._out(self.data[b]), self.labels[b]
        else:
            batches = (idx[s: s + self.batch_size] for s in range(0, len(idx), self.batch_size))
            for x, y in _streamed(self.data, self.labels, batches, self.device):
                yield self._out(x), y

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x) if self.transform else x


def _stage(data: torch.Tensor, labels: torch.Tensor, b: torch.Tensor,
           pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather batch ``b`` into (pinned) host buffers."""
    x = torch.empty((len(b), *data.shape[1:]), dtype=data.dtype, pin_memory=pin)
    y = torch.empty(len(b), dtype=labels.dtype, pin_memory=pin)
    torch.index_select(data, 0, b, out=x)
    torch.index_select(labels, 0, b, out=y)
    return x, y


def _streamed(data: torch.Tensor, labels: torch.Tensor, batches: Iterator[torch.Tensor],
              device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Host batches copied to ``device`` asynchronously, the next one while this one is used.

    On CUDA the copies run on a side stream from pinned buffers (the caching host
    allocator keeps a buffer until its copy is done); the compute stream waits for each
    batch's copy before using it. Elsewhere this is a plain gather.
    """
    if device.type != "cuda":
        for b in batches:
            x, y = _stage(data, labels, b, pin=False)
            yield x.to(device), y.to(device)
        return
    copy_stream = torch.cuda.Stream(device)

    def issue(b: torch.Tensor):
        x, y = _stage(data, labels, b, pin=True)
        with torch.cuda.stream(copy_stream):
            gx, gy = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(copy_stream)
        return gx, gy, ready

    pending = None
    for b in batches:
        nxt = issue(b)
        if pending is not None:
            yield _wait(*pending)
        pending = nxt
    if pending is not None:
        yield _wait(*pending)


def _wait(x: torch.Tensor, y: torch.Tensor, ready) -> tuple[torch.Tensor, torch.Tensor]:
    current = torch.cuda.current_stream(x.device)
    current.wait_event(ready)
    x.record_stream(current)  # allocated on the copy stream, used on this one
    y.record_stream(current)
    return x, y
