"""The on-disk feature cache: computes each image once, survives processes, changes nothing."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch

from robust_transfer.engine.features import DiskFeatureStore, key_digest
from robust_transfer.engine.transfer import MemoryFeatureStore, Recipe, finetune
from robust_transfer.models import create_model

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
    return create_model("small_resnet", 10, mean=(0.3,) * 3, std=(0.35,) * 3, input_size=16).eval()


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


def test_augmented_runs_bypass_the_cache(tmp_path, source, digits_train, digits_test):
    store = DiskFeatureStore(tmp_path)
    result = finetune(source, digits_train, digits_test, n=30, epochs=1, recipe=Recipe(augment=True),
                      device="cpu", feature_store=store)
    assert not result.cached_prefix and store.computed == 0
