"""An on-disk cache of frozen-prefix outputs that verifies every row it hands back.

:func:`robust_transfer.engine.transfer.finetune` asks a :class:`~robust_transfer.engine.transfer.FeatureStore`
for the prefix outputs of the images it trains and tests on. :class:`DiskFeatureStore`
keeps them on disk per key (source checkpoint sha256, dataset, split, resolution, prefix
depth, pooled, storage dtype), one row per image of the split, so a run that needs n
images computes only those no earlier run computed.

Layout of ``root/<k[:2]>/<k>/`` where ``k`` is the sha256 of the canonical key JSON:

==============  =========================================================================
``key.json``    the key, for people and for checking hash collisions
``data.npy``    ``[rows, *shape]`` in the key's dtype; row i holds image i of the split
``index.npz``   ``done`` (bool ``[rows]``), ``crc`` (uint32 ``[rows]``: CRC-32 of each
                done row's bytes) and ``shape`` (the row shape)
``lock``        taken with ``flock`` while a process reads, computes or writes the key
==============  =========================================================================

**Every row is verified when read.** A row is handed back only if the index marks it
done, its bytes match their CRC-32, and it is finite; the file must have the key's dtype
and the index's row shape. Rows that fail are recomputed (and rewritten) with one
:class:`FeatureCacheWarning` per call; a file that cannot be read, or has the wrong dtype
or shape, counts as empty. Checksums are per row rather than per block of rows written
together because the row is already the unit of computation (runs with nested subsets
fill a key a few rows at a time): a damaged row costs one image's recomputation, and the
checksum costs 4 bytes per row against 8 KiB (pooled ResNet-50) or more of data. CRC-32
detects every burst of up to 32 flipped bits and any zeroed run of bytes (the CRC of zeros
is not zero); it guards against damage, not against someone who rewrites both files.

Writes go through :func:`robust_transfer.io.atomic_write`, data first and index second:
a killed process leaves either the old pair or new data with the old index, whose rows
still hold the same bytes. Files are not fsynced (a cache can be recomputed).

Processes share the cache through the per-key lock, so an image's outputs are computed
once even when many workers want them at the same time. ``max_bytes`` caps the size of
the whole cache folder (bytes on disk: rows never computed are holes in a sparse
file): a write that would exceed it raises :class:`CacheBudgetError`
with advice instead (:func:`robust_transfer.study.cache_budget.check_cache_budget` checks a
whole study before any run starts).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from robust_transfer.errors import ConfigError
from robust_transfer.io import atomic_write, atomic_write_text
from robust_transfer.units import format_bytes

CHUNK_BYTES = 256 * 2**20  # computed rows written at a time
DTYPES = ("float32", "float16")
CACHE_ADVICE = ("store prefix outputs as float16 (recipe feature_dtype: float16, half the "
                "bytes), use fewer test images, give the cache a bigger budget or disk, or "
                "turn the feature cache off (feature_cache: false)")


class FeatureCacheWarning(UserWarning):
    """Rows of the feature cache failed verification and were recomputed."""


class CacheBudgetError(ConfigError):
    """The feature cache would not fit its byte budget (or the disk)."""


@dataclass(frozen=True)
class PrefixKey:
    """What a split's frozen-prefix outputs depend on: the one feature-cache key type.

    The engine computes outputs under it, :class:`DiskFeatureStore` files them under
    :meth:`digest`, and the study's budget check and cost model plan bytes per key.

    Attributes:
        source: the source checkpoint's sha256 (or another id of its weights).
        dataset: the target dataset.
        split: ``"train"`` or ``"test"``.
        resolution: input size in pixels.
        depth: frozen stages (stem + frozen blocks) whose output is held.
        pooled: the output is the pooled feature vector (0 unfrozen blocks).
        dtype: how rows are stored (one of :data:`DTYPES`).
    """

    source: str
    dataset: str
    split: str
    resolution: int
    depth: int
    pooled: bool
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"feature cache dtype must be one of {', '.join(DTYPES)}, "
                              f"got {self.dtype!r}")

    @classmethod
    def from_dict(cls, key: dict) -> PrefixKey:
        """A key from its JSON form (``key.json``); ``dtype`` may be absent (float32).

        Raises:
            ConfigError: a field is missing or unknown, or the dtype is not one of :data:`DTYPES`.
        """
        names = [f.name for f in fields(cls)]
        missing = [n for n in names[:-1] if n not in key]
        if missing:
            raise ConfigError(f"feature cache key lacks {', '.join(missing)}")
        unknown = sorted(set(key) - set(names))
        if unknown:
            raise ConfigError(f"feature cache key has unknown field(s) {', '.join(unknown)}")
        return cls(**key)

    def to_dict(self) -> dict:
        """The JSON form hashed for the folder name. float32 keys leave ``dtype`` out, as
        they did before half precision existed, so caches written then are still found."""
        d = asdict(self)
        if d["dtype"] == "float32":
            del d["dtype"]
        return d

    def digest(self) -> str:
        """The folder name: :func:`key_digest` of :meth:`to_dict`."""
        return key_digest(self.to_dict())

    def describe(self) -> str:
        """``"digits test split of source 1a2b3c4d at depth 4 in float32"``."""
        return (f"{self.dataset} {self.split} split of source {self.source[:8]} at depth "
                f"{self.depth} in {self.dtype}")


def key_digest(key: dict) -> str:
    """The sha256 of ``key`` as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def parse_bytes(value: int | float | str) -> int:
    """A byte count from an int or a string such as ``"20 GB"``, ``"512MiB"``, ``"1e9"``.

    Raises:
        ConfigError: not a positive, finite size.
    """
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    text = str(value).strip().lower().replace(" ", "")
    number = text.rstrip("kmgtib")
    unit = text[len(number):]
    try:
        size = float(number) * units[unit]
    except (ValueError, KeyError):
        raise ConfigError(f"bad byte size {value!r}: use a number of bytes or e.g. '20 GB', "
                          "'512 MiB'") from None
    if isinstance(value, bool) or not np.isfinite(size) or size <= 0:
        raise ConfigError(f"a byte size must be positive and finite, got {value!r}")
    return int(size)


class DiskFeatureStore:
    """Frozen-prefix outputs on disk, computed at most once per image and key, verified on read.

    Implements the :class:`~robust_transfer.engine.transfer.FeatureStore` protocol.

    Args:
        root: the cache folder (created when first written).
        max_bytes: the most bytes the folder's data files may hold; ``None`` = no limit.

    Example:
        >>> store = DiskFeatureStore(tmp_path / "cache", max_bytes=20 * 2**30)
        >>> finetune(model, train, test, n=100, feature_store=store, source_id=sha256)
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.computed = 0  # images computed by this instance (for tests and benchmarks)
        self.rejected = 0  # rows that failed verification and were recomputed

    def get_or_compute(self, key: PrefixKey | dict, indices: np.ndarray,
                       compute: Callable[[np.ndarray], torch.Tensor]) -> torch.Tensor:
        """Outputs for ``indices`` of the split ``key`` names, computing only missing rows.

        Args:
            key: a :class:`PrefixKey` (or its dict form, :meth:`PrefixKey.from_dict`);
                its ``dtype`` is how rows are stored.
            indices: int image indices into the split.
            compute: ``compute(missing_indices) -> float Tensor [len(missing), ...]``.

        Returns:
            A tensor ``[len(indices), ...]`` in the key's dtype, in the order of ``indices``.

        Raises:
            ConfigError: an incomplete key or unknown dtype.
            CacheBudgetError: writing the new rows would exceed ``max_bytes``.
        """
        if isinstance(key, dict):
            key = PrefixKey.from_dict(key)
        dtype = key.dtype
        indices = np.asarray(indices, dtype=np.int64)
        folder = self._folder(key)
        with _locked(folder / "lock"):
            entry = _Entry.read(folder, dtype)
            todo, problems = entry.missing(indices)
            if problems:
                self.rejected += problems.count
                warnings.warn(f"feature cache {folder}: {problems}; recomputing "
                              f"{len(todo)} row(s)", FeatureCacheWarning, stacklevel=2)
            if len(todo):
                def counted(idx: np.ndarray) -> np.ndarray:
                    self.computed += len(idx)
                    return compute(idx).detach().cpu().to(getattr(torch, dtype)).numpy()

                rows = max(int(indices.max()) + 1, len(entry.done))
                entry = entry.rewrite(folder, todo, counted, rows,
                                      lambda nbytes: self._check_budget(folder, nbytes))
            return entry.rows(indices)

    def _folder(self, key: PrefixKey) -> Path:
        digest = key.digest()
        folder = self.root / digest[:2] / digest
        for level in (self.root, self.root / digest[:2], folder):
            _clear_for(level, folder_wanted=True)
        for name in ("lock", "key.json", "data.npy", "index.npz"):
            _clear_for(folder / name, folder_wanted=False)
        key_file = folder / "key.json"
        if not key_file.exists():
            atomic_write_text(key_file, json.dumps(key.to_dict(), sort_keys=True))
        return folder

    memory_mapped = True  # whole splits come back as views of the file (see cache_plan)

    def _check_budget(self, folder: Path, new_bytes: int) -> None:
        if self.max_bytes is None:
            return
        others = sum(disk_bytes(p) for p in self.root.glob("*/*/data.npy") if p.parent != folder)
        if others + new_bytes > self.max_bytes:
            raise CacheBudgetError(
                f"the feature cache {self.root} would grow to {format_bytes(others + new_bytes)}, "
                f"over its budget of {format_bytes(self.max_bytes)}: {CACHE_ADVICE}")


def _clear_for(path: Path, folder_wanted: bool) -> None:
    """Make room for the cache's own folder (or file) at ``path``: a file where a folder
    belongs, or a folder where a file belongs, is removed (the cache is derived data,
    rebuilt from the source and images) with one :class:`FeatureCacheWarning`."""
    wrong = (path.exists() or path.is_symlink()) and (
        not path.is_dir() if folder_wanted else path.is_dir() and not path.is_symlink())
    if wrong:
        warnings.warn(f"feature cache: {path} was a {'file' if folder_wanted else 'folder'}; "
                      "removed it, the cache is rebuilt", FeatureCacheWarning, stacklevel=3)
        try:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except FileNotFoundError:  # another worker removed it first
            pass
        except OSError as err:
            raise ConfigError(f"feature cache: {path} is in the way and cannot be removed "
                              f"({err.strerror or err}); remove it by hand") from None
    if folder_wanted:
        try:
            path.mkdir(exist_ok=True)
        except FileExistsError:  # a file put there just now: the next call removes it
            raise ConfigError(f"feature cache: {path} keeps being replaced by a file; "
                              "remove it by hand") from None


def disk_bytes(path: Path) -> int:
    """Bytes ``path`` occupies on disk (data files are sparse: unwritten rows are holes)."""
    st = path.stat()
    return min(st.st_size, getattr(st, "st_blocks", st.st_size // 512 + 1) * 512)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (``flock`` on Linux: released by the kernel if the
    process dies), shared with the study driver's lock through the ``filelock`` package."""
    with FileLock(path):
        yield


def row_crc(rows: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's bytes (C order), uint32 ``[len(rows)]``."""
    flat = np.ascontiguousarray(rows).reshape(len(rows), -1).view(np.uint8)
    return np.fromiter((zlib.crc32(r.data) for r in flat), dtype=np.uint32, count=len(rows))


class _Problems:
    """What verification found, for the one warning line."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.count = 0

    def add(self, count: int, reason: str) -> None:
        if count:
            self.count += count
            self.reasons.append(f"{count} row(s) {reason}")

    def discard(self, reason: str) -> None:
        self.reasons.append(f"cache files discarded: {reason}")

    def __bool__(self) -> bool:
        return bool(self.reasons)

    def __str__(self) -> str:
        return "; ".join(self.reasons)


class _Entry:
    """One key's rows: data, which are done, their checksums (None before the first write)."""

    def __init__(self, dtype: str, data: np.ndarray | None, done: np.ndarray, crc: np.ndarray,
                 damage: str = "") -> None:
        self.dtype, self.data, self.done, self.crc, self.damage = dtype, data, done, crc, damage

    @classmethod
    def read(cls, folder: Path, dtype: str) -> _Entry:
        data_path, index_path = folder / "data.npy", folder / "index.npz"
        empty = cls(dtype, None, np.zeros(0, bool), np.zeros(0, np.uint32))
        if not data_path.exists() and not index_path.exists():
            return empty
        try:
            with np.load(index_path, allow_pickle=False) as index:
                done, crc, shape = index["done"], index["crc"], tuple(index["shape"].tolist())
            data = np.load(data_path, mmap_mode="c", allow_pickle=False)  # writes stay private
        except (OSError, ValueError, EOFError, KeyError) as err:  # truncated, garbage, missing
            empty.damage = f"unreadable ({type(err).__name__}: {str(err)[:80]})"
            return empty
        problem = _layout_problem(data, done, crc, shape, dtype)
        if problem:
            empty.damage = problem
            return empty
        return cls(dtype, data, done, crc)

    def missing(self, indices: np.ndarray) -> tuple[np.ndarray, _Problems]:
        """Indices (unique, sorted) to compute, and what failed verification."""
        problems = _Problems()
        if self.damage:
            problems.discard(self.damage)
        wanted = np.unique(indices)
        claimed = wanted[wanted < len(self.done)]
        claimed = claimed[self.done[claimed]]
        beyond = claimed[claimed >= (0 if self.data is None else len(self.data))]
        problems.add(len(beyond), "claimed done beyond the end of the data file")
        claimed = claimed[~np.isin(claimed, beyond)]
        data = self.data if self.data is not None else np.zeros((0, 1))  # None: nothing claimed
        bad_crc, bad_value = np.zeros(len(claimed), bool), np.zeros(len(claimed), bool)
        row_bytes = data[0].nbytes if len(claimed) else 1
        for part in _chunks(np.arange(len(claimed)), row_bytes):  # never the whole split at once
            rows = np.asarray(data[claimed[part]])
            bad_crc[part] = row_crc(rows) != self.crc[claimed[part]]
            bad_value[part] = ~np.isfinite(rows.reshape(len(rows), -1)).all(axis=1) & ~bad_crc[part]
        problems.add(int(bad_crc.sum()), "failed their checksum")
        problems.add(int(bad_value.sum()), "hold NaN or Inf")
        bad = bad_crc | bad_value
        good = claimed[~bad]
        return np.setdiff1d(wanted, good), problems

    def rewrite(self, folder: Path, todo: np.ndarray, compute: Callable[[np.ndarray], np.ndarray],
                rows: int, check_budget: Callable[[int], None]) -> _Entry:
        """Write a new data file with ``rows`` rows: the good old ones and ``todo`` computed.

        The file is filled through a memory map, ``CHUNK_BYTES`` of computed rows at a time,
        so a split far larger than memory (10,000 ResNet-50 test images at 784 KiB) is
        never held whole. Rows that come out non-finite are written but not marked done:
        they are handed back this once and recomputed next time.
        """
        known = self.data if self.data is not None else compute(todo[:16])  # learns the row shape
        first = None if self.data is not None else known
        shape, dtype = known.shape[1:], known.dtype
        row_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        kept = 0 if self.data is None else int(self.done[: len(self.data)].sum())
        check_budget((kept + len(todo)) * row_bytes)  # rows never written stay holes on disk
        done, crc = np.zeros(rows, dtype=bool), np.zeros(rows, dtype=np.uint32)
        with atomic_write(folder / "data.npy", "w+b") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                     "fortran_order": False, "shape": (rows, *shape)})
            offset = f.tell()
            f.truncate(offset + rows * row_bytes)
            f.flush()
            out = np.memmap(f, dtype=dtype, mode="r+", offset=offset, shape=(rows, *shape))
            if self.data is not None:  # the good old rows, in chunks
                keep = np.flatnonzero(self.done[: len(self.data)])
                keep = keep[~np.isin(keep, todo)]
                for part in _chunks(keep, row_bytes):
                    out[part] = self.data[part]
                done[keep], crc[keep] = True, self.crc[keep]
            parts = [(todo[:16], first), *((p, None) for p in _chunks(todo[16:], row_bytes))] \
                if first is not None else [(p, None) for p in _chunks(todo, row_bytes)]
            for part, fresh in parts:
                fresh = compute(part) if fresh is None else fresh
                if fresh.shape[1:] != shape:
                    raise ConfigError(f"feature cache holds outputs of shape {shape} but the run "
                                      f"computed {fresh.shape[1:]}: delete the cache folder and rerun")
                out[part] = fresh
                crc[part] = row_crc(fresh)
                done[part] = np.isfinite(fresh.reshape(len(fresh), -1)).all(axis=1)
            out.flush()
            del out
        # the data file is in place: now the index, which never claims rows the data lacks
        with atomic_write(folder / "index.npz") as f:
            np.savez(f, done=done, crc=crc, shape=np.asarray(shape, dtype=np.int64))
        data = np.load(folder / "data.npy", mmap_mode="c", allow_pickle=False)
        return _Entry(self.dtype, data, done, crc)

    def rows(self, indices: np.ndarray) -> torch.Tensor:
        """Rows ``indices``: a view of the memory-mapped file when they are all rows in
        order (the test split: paged in as read, never copied whole), else a copy."""
        if self.data is None:  # nothing asked, nothing stored
            return torch.empty(0)
        if len(indices) == len(self.data) and np.array_equal(indices, np.arange(len(indices))):
            return torch.from_numpy(self.data)
        return torch.from_numpy(np.ascontiguousarray(self.data[indices]))


def _chunks(idx: np.ndarray, row_bytes: int) -> list[np.ndarray]:
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    return [idx[i: i + step] for i in range(0, len(idx), step)]


def _layout_problem(data: np.ndarray, done: np.ndarray, crc: np.ndarray, shape: tuple,
                    dtype: str) -> str:
    if data.dtype != np.dtype(dtype):
        return f"data.npy holds {data.dtype}, the key says {dtype}"
    if data.ndim < 1 or data.shape[1:] != shape:
        return f"data.npy rows have shape {data.shape[1:]}, the index says {shape}"
    if done.dtype != bool or crc.dtype != np.uint32 or done.shape != crc.shape or done.ndim != 1:
        return "index.npz is malformed"
    return ""


