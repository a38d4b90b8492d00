"""An on-disk cache of frozen-prefix outputs, shared by runs and worker processes.

:func:`robust_transfer.engine.transfer.finetune` asks a :class:`~robust_transfer.engine.transfer.FeatureStore`
for the prefix outputs of the images it trains and tests on. :class:`DiskFeatureStore`
keeps them on disk per key (source checkpoint sha256, dataset, split, resolution, prefix
depth, pooled), one row per image of the split plus a mask of the rows computed so far,
so a run that needs n images computes only those no earlier run computed.

Layout of ``root/<k[:2]>/<k>/`` where ``k`` is the sha256 of the canonical key JSON:

=============  ==========================================================================
``key.json``   the key, for people and for checking hash collisions
``data.npy``   float32 ``[rows, *shape]``; row i holds image i of the split if computed
``mask.npy``   bool ``[rows]``; true where the row is computed
``lock``       taken with ``flock`` while a process reads, computes or writes the key
=============  ==========================================================================

Writes go to a temporary file in the same folder and are renamed into place, data first
and mask second: a killed process leaves either the old pair or new data with the old
mask, which only understates what is computed. Files are not fsynced (a cache can be
recomputed): one left unreadable by a power cut counts as empty. Processes share the cache through the per-key lock,
so an image's outputs are computed once even when many workers want them at the same
time. Augmented inputs change every epoch, so ``finetune`` never asks a store for them:
with augmentation on, caching is off.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from robust_transfer.errors import ConfigError

KEY_FIELDS = ("source", "dataset", "split", "resolution", "depth", "pooled")


def key_digest(key: dict) -> str:
    """The sha256 of ``key`` as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class DiskFeatureStore:
    """Frozen-prefix outputs on disk, computed at most once per image and key.

    Implements the :class:`~robust_transfer.engine.transfer.FeatureStore` protocol.

    Args:
        root: the cache folder (created when first written).

    Example:
        >>> store = DiskFeatureStore(tmp_path / "cache")
        >>> finetune(model, train, test, n=100, feature_store=store, source_id=sha256)
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.computed = 0  # images computed by this instance (for tests and benchmarks)

    def get_or_compute(self, key: dict, indices: np.ndarray,
                       compute: Callable[[np.ndarray], torch.Tensor]) -> torch.Tensor:
        """Outputs for ``indices`` of the split ``key`` names, computing only missing rows.

        Args:
            key: must hold the fields in :data:`KEY_FIELDS`.
            indices: int image indices into the split.
            compute: ``compute(missing_indices) -> float Tensor [len(missing), ...]``.

        Returns:
            A float32 tensor ``[len(indices), ...]`` in the order of ``indices``.
        """
        missing_fields = [f for f in KEY_FIELDS if f not in key]
        if missing_fields:
            raise ConfigError(f"feature cache key lacks {', '.join(missing_fields)}")
        indices = np.asarray(indices, dtype=np.int64)
        folder = self._folder(key)
        with _locked(folder / "lock"):
            data, mask = _read(folder)
            todo = _missing(indices, mask)
            if len(todo):
                fresh = compute(todo).detach().float().cpu().numpy()
                data, mask = _merge(data, mask, todo, fresh, int(indices.max()) + 1)
                _write(folder, data, mask)
                self.computed += len(todo)
            return torch.from_numpy(np.ascontiguousarray(data[indices]))

    def _folder(self, key: dict) -> Path:
        digest = key_digest(key)
        folder = self.root / digest[:2] / digest
        folder.mkdir(parents=True, exist_ok=True)
        key_file = folder / "key.json"
        if not key_file.exists():
            _atomic_save(key_file, lambda f: f.write(json.dumps(key, sort_keys=True).encode()))
        return folder


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``: released by the kernel if the process dies."""
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read(folder: Path) -> tuple[np.ndarray | None, np.ndarray]:
    data_path, mask_path = folder / "data.npy", folder / "mask.npy"
    if not data_path.exists() or not mask_path.exists():
        return None, np.zeros(0, dtype=bool)
    try:
        mask = np.load(mask_path)
        data = np.load(data_path, mmap_mode="r")
    except (OSError, ValueError, EOFError):  # e.g. cut short by a power loss: recompute
        return None, np.zeros(0, dtype=bool)
    # a crash between the two renames leaves newer (larger) data with the older mask
    return data, mask[: len(data)]


def _missing(indices: np.ndarray, mask: np.ndarray) -> np.ndarray:
    known = np.zeros(len(indices), dtype=bool)
    inside = indices < len(mask)
    known[inside] = mask[indices[inside]]
    return np.unique(indices[~known])


def _merge(data: np.ndarray | None, mask: np.ndarray, todo: np.ndarray, fresh: np.ndarray,
           min_rows: int) -> tuple[np.ndarray, np.ndarray]:
    rows = max(min_rows, len(mask))
    if data is not None and data.shape[1:] != fresh.shape[1:]:
        raise ConfigError(f"feature cache holds outputs of shape {data.shape[1:]} but the run "
                          f"computed {fresh.shape[1:]}: delete the cache folder and rerun")
    out = np.zeros((rows, *fresh.shape[1:]), dtype=np.float32)
    new_mask = np.zeros(rows, dtype=bool)
    if data is not None:
        out[: len(mask)][mask] = data[: len(mask)][mask]
        new_mask[: len(mask)] = mask
    out[todo] = fresh
    new_mask[todo] = True
    return out, new_mask


def _write(folder: Path, data: np.ndarray, mask: np.ndarray) -> None:
    # data first, then mask: the mask never claims rows the data file lacks
    _atomic_save(folder / "data.npy", lambda f: np.save(f, data))
    _atomic_save(folder / "mask.npy", lambda f: np.save(f, mask))


def _atomic_save(path: Path, write: Callable) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        # no fsync: a cache can be recomputed, and _read treats an unreadable file as empty
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
