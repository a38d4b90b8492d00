"""The on-disk feature cache: computes each image once, survives processes, changes nothing,
and never hands back damaged rows."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from robust_transfer.engine.features import (
    CacheBudgetError,
    DiskFeatureStore,
    FeatureCacheWarning,
    key_digest,
    parse_bytes,
)
from robust_transfer.engine.transfer import MemoryFeatureStore, Recipe, finetune
from robust_transfer.errors import ConfigError
from robust_transfer.models import build_architecture

KEY = {"source": "abc", "dataset": "digits", "split": "train", "resolution": 16, "depth": 4,
       "pooled": True}


def fake_features(indices: np.ndarray) -> torch.Tensor:
    """Deterministic per-image outputs: row i is (i, i^2, -i)."""
    i = torch.as_tensor(np.asarray(indices), dtype=torch.float32)
    return torch.stack([i, i * i, -i], dim=1)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def __call__(self, indices: np.ndarray) -> torch.Tensor:
        self.calls.append(np.asarray(indices))
        return fake_features(indices)


def test_computes_only_missing_rows_and_returns_requested_order(tmp_path):
    store, rec = DiskFeatureStore(tmp_path), Recorder()
    first = store.get_or_compute(KEY, np.array([3, 1, 2]), rec)
    second = store.get_or_compute(KEY, np.array([9, 2, 5, 1]), rec)
    assert [c.tolist() for c in rec.calls] == [[1, 2, 3], [5, 9]]
    assert torch.equal(first, fake_features([3, 1, 2]))
    assert torch.equal(second, fake_features([9, 2, 5, 1]))
    assert store.computed == 5


def test_a_new_instance_reads_what_another_wrote(tmp_path):
    DiskFeatureStore(tmp_path).get_or_compute(KEY, np.arange(10), fake_features)
    rec = Recorder()
    out = DiskFeatureStore(tmp_path).get_or_compute(KEY, np.array([7, 0]), rec)
    assert rec.calls == [] and torch.equal(out, fake_features([7, 0]))
    other_key = {**KEY, "split": "test"}
    DiskFeatureStore(tmp_path).get_or_compute(other_key, np.array([0]), rec)
    assert len(rec.calls) == 1, "a different key must not reuse rows"
    assert key_digest(KEY) != key_digest(other_key)


def test_incomplete_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        DiskFeatureStore(tmp_path).get_or_compute({"source": "x"}, np.arange(2), fake_features)


def _worker(root: str, start: int, queue) -> None:
    store = DiskFeatureStore(root)
    out = store.get_or_compute(KEY, np.arange(start, start + 600), fake_features)
    queue.put((store.computed, bool(torch.equal(out, fake_features(np.arange(start, start + 600))))))


def test_processes_sharing_a_key_compute_each_image_once(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), s, queue)) for s in (0, 400)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(ok for _, ok in results)
    assert sum(c for c, _ in results) == 1000  # the union 0..999, each row computed once
    assert not list(tmp_path.rglob("*.tmp")), "temporary files must be renamed or removed"


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    return build_architecture("small_resnet", 10, mean=(0.3,) * 3, std=(0.35,) * 3, input_size=16).eval()


@pytest.mark.parametrize("unfrozen", [0, 1])
def test_cached_and_uncached_runs_are_identical(tmp_path, source, digits_train, digits_test, unfrozen):
    recipe = Recipe(lr=0.05, batch_size=32, augment=False)
    kwargs = dict(unfrozen=unfrozen, epochs=3, seed=1, recipe=recipe, device="cpu", source_id="s")
    plain = finetune(source, digits_train, digits_test, n=120, feature_store=MemoryFeatureStore(),
                     **kwargs)
    store = DiskFeatureStore(tmp_path)
    # a smaller run first, so the second fills the cache only partly from scratch
    finetune(source, digits_train, digits_test, n=40, feature_store=store, **kwargs)
    cached = finetune(source, digits_train, digits_test, n=120, feature_store=store, **kwargs)
    assert plain.cached_prefix and cached.cached_prefix
    assert store.computed == 120 + len(digits_test), "the n=40 images were reused"
    assert [m.test_acc for m in cached.history] == [m.test_acc for m in plain.history]
    for a, b in zip(cached.history, plain.history, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)


def test_augmented_runs_cache_only_the_test_images(tmp_path, source, digits_train, digits_test):
    store = DiskFeatureStore(tmp_path)
    result = finetune(source, digits_train, digits_test, n=30, epochs=1, recipe=Recipe(augment=True),
                      device="cpu", feature_store=store)
    assert result.info["cache"] == {"depth": 4, "pooled": True, "train": False, "test": True}
    assert store.computed == len(digits_test)
    assert {json.loads(p.read_text())["split"] for p in tmp_path.rglob("key.json")} == {"test"}


# --- verification: damaged files are never used -------------------------------------------
def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) - 200, len(raw) - 100):  # inside the data, past the header
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def _zero(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 4096] = bytes(4096)
    path.write_bytes(bytes(raw))


def _nan(path: Path) -> None:
    data = np.load(path)
    data[len(data) // 2].flat[0] = np.nan
    data[-1].flat[-1] = np.inf
    np.save(path, data)  # a valid .npy: only the values are wrong


def _shape(path: Path) -> None:
    data = np.load(path)
    np.save(path, data.reshape(len(data), -1))  # the same bytes, rows flattened


def _dtype(path: Path) -> None:
    np.save(path, np.load(path).astype(np.float64))


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _claim_unwritten(path: Path) -> None:
    index_path = path.with_name("index.npz")
    with np.load(index_path) as index:
        done, crc, shape = index["done"], index["crc"], index["shape"]
    done = np.ones(len(done) + 500, dtype=bool)  # every row, and rows beyond the file
    crc = np.concatenate([crc, np.zeros(500, dtype=np.uint32)])
    np.savez(index_path, done=done, crc=crc, shape=shape)


CORRUPTIONS = {"flip": _flip, "zero": _zero, "nan": _nan, "shape": _shape, "dtype": _dtype,
               "truncate": _truncate, "claim_unwritten": _claim_unwritten}
SMALL_RUN = dict(unfrozen=1, epochs=2, seed=3, recipe=Recipe(lr=0.05, batch_size=32, augment=False),
                 device="cpu", source_id="s")


@pytest.fixture(scope="module")
def untouched(source, digits_train, digits_test):
    return finetune(source, digits_train, digits_test, n=120, feature_store=MemoryFeatureStore(),
                    **SMALL_RUN)


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_damaged_cache_is_recomputed_and_results_equal_an_untouched_run(
        tmp_path, source, digits_train, digits_test, untouched, corruption):
    store = DiskFeatureStore(tmp_path)
    finetune(source, digits_train, digits_test, n=60, feature_store=store, **SMALL_RUN)
    files = sorted(tmp_path.rglob("data.npy"))
    assert len(files) == 2  # train and test
    for path in files:
        CORRUPTIONS[corruption](path)
    with pytest.warns(FeatureCacheWarning) as caught:
        again = finetune(source, digits_train, digits_test, n=120, feature_store=store, **SMALL_RUN)
    # one warning per damaged key read; the test key's false claims lie past the rows read
    assert len(caught) == (1 if corruption == "claim_unwritten" else 2)
    assert [m.test_acc for m in again.history] == [m.test_acc for m in untouched.history]
    assert [m.train_loss for m in again.history] == [m.train_loss for m in untouched.history]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: the next run reads it without complaint
        third = finetune(source, digits_train, digits_test, n=120, feature_store=store, **SMALL_RUN)
    assert [m.test_acc for m in third.history] == [m.test_acc for m in untouched.history]


def test_only_damaged_rows_are_recomputed(tmp_path):
    store = DiskFeatureStore(tmp_path)
    store.get_or_compute(KEY, np.arange(10), fake_features)
    path = next(tmp_path.rglob("data.npy"))
    data = np.load(path)
    data[4, 1] += 1.0  # a plausible wrong value: finite, right shape and dtype
    np.save(path, data)
    rec = Recorder()
    with pytest.warns(FeatureCacheWarning, match="1 row.*checksum"):
        out = store.get_or_compute(KEY, np.array([4, 5, 6]), rec)
    assert [c.tolist() for c in rec.calls] == [[4]] and store.rejected == 1
    assert torch.equal(out, fake_features([4, 5, 6]))


def test_non_finite_outputs_are_returned_but_never_marked_done(tmp_path):
    store = DiskFeatureStore(tmp_path)
    nan_rows = lambda idx: torch.full((len(idx), 3), float("nan"))  # noqa: E731
    out = store.get_or_compute(KEY, np.array([0, 1]), nan_rows)
    assert out.isnan().all()
    rec = Recorder()
    assert torch.equal(store.get_or_compute(KEY, np.array([1, 0]), rec), fake_features([1, 0]))
    assert [c.tolist() for c in rec.calls] == [[0, 1]], "the NaN rows were not trusted"


def test_large_splits_are_written_in_chunks_and_come_back_memory_mapped(tmp_path, monkeypatch):
    from robust_transfer.engine import features

    monkeypatch.setattr(features, "CHUNK_BYTES", 5 * 3 * 4)  # 5 rows of 3 float32 at a time
    store, rec = DiskFeatureStore(tmp_path), Recorder()
    out = store.get_or_compute(KEY, np.arange(23), rec)
    assert [len(c) for c in rec.calls] == [16, 5, 2]  # a probe for the row shape, then chunks
    assert torch.equal(out, fake_features(np.arange(23)))
    again = DiskFeatureStore(tmp_path).get_or_compute(KEY, np.arange(23), rec)
    assert torch.equal(again, out) and len(rec.calls) == 3
    assert _mapped_file(again.data_ptr()) == str(next(tmp_path.rglob("data.npy"))), "not a copy"
    assert _mapped_file(store.get_or_compute(KEY, np.arange(5), rec).data_ptr()) is None


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (Linux), if any."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        low, high = (int(x, 16) for x in parts[0].split("-"))
        if low <= address < high:
            return parts[5] if len(parts) > 5 and parts[5].startswith("/") else None
    return None


def test_float16_keys_store_half_the_bytes(tmp_path):
    store = DiskFeatureStore(tmp_path)
    out = store.get_or_compute({**KEY, "dtype": "float16"}, np.arange(8), fake_features)
    assert out.dtype == torch.float16 and torch.equal(out.float(), fake_features(np.arange(8)))
    assert np.load(next(tmp_path.rglob("data.npy"))).dtype == np.float16
    with pytest.raises(ConfigError, match="dtype"):
        store.get_or_compute({**KEY, "dtype": "int8"}, np.arange(2), fake_features)


def test_budget_refuses_a_cache_that_cannot_fit_with_advice(tmp_path):
    store = DiskFeatureStore(tmp_path, max_bytes=100 * 3 * 4)  # 100 rows of 3 float32
    store.get_or_compute(KEY, np.arange(100), fake_features)
    with pytest.raises(CacheBudgetError, match="float16.*fewer test images.*feature_cache: false"):
        store.get_or_compute({**KEY, "split": "test"}, np.arange(10), fake_features)
    with pytest.raises(CacheBudgetError):
        store.get_or_compute(KEY, np.arange(101), fake_features)
    assert store.get_or_compute(KEY, np.arange(50), fake_features).shape == (50, 3)


@pytest.mark.parametrize("text, expected", [("20 GB", 20 * 10**9), ("512MiB", 512 * 2**20),
                                            (4096, 4096), ("1e6", 10**6)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-5 GB", 0, "nan", True, "5 XB"])
def test_parse_bytes_refuses(bad):
    with pytest.raises(ConfigError):
        parse_bytes(bad)


def _data_npy_a_folder(root: Path) -> None:
    path = next(root.rglob("data.npy"))
    path.unlink()
    (path / "inner").mkdir(parents=True)


def _index_a_folder(root: Path) -> None:
    path = next(root.rglob("index.npz"))
    path.unlink()
    path.mkdir()


def _lock_a_folder(root: Path) -> None:
    path = next(root.rglob("lock"))
    path.unlink()
    path.mkdir()


def _shard_a_file(root: Path) -> None:
    shard = next(p for p in root.iterdir() if p.is_dir())
    shutil.rmtree(shard)
    shard.write_text("not a folder")


def _root_a_file(root: Path) -> None:
    shutil.rmtree(root)
    root.write_text("not a folder")


STRUCTURAL = {"data-folder": _data_npy_a_folder, "index-folder": _index_a_folder,
              "lock-folder": _lock_a_folder, "shard-file": _shard_a_file, "root-file": _root_a_file}


@pytest.mark.parametrize("damage", sorted(STRUCTURAL))
def test_structural_damage_is_repaired_by_rebuilding(tmp_path, damage):
    root = tmp_path / "feature_cache"
    DiskFeatureStore(root).get_or_compute(KEY, np.arange(6), fake_features)
    STRUCTURAL[damage](root)
    rec = Recorder()
    with pytest.warns(FeatureCacheWarning):
        out = DiskFeatureStore(root).get_or_compute(KEY, np.arange(6), rec)
    # the rows are recomputed unless they survived (a lock in the way loses no data)
    assert torch.equal(out, fake_features(np.arange(6)))
    assert len(rec.calls) == (0 if damage == "lock-folder" else 1)
    rec = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: read back without complaint or recomputation
        again = DiskFeatureStore(root).get_or_compute(KEY, np.arange(6), rec)
    assert rec.calls == [] and torch.equal(again, out)
