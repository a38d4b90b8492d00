"""Fine-tuning: the cached frozen prefix equals running the whole model, without autograd
through the frozen backbone, on subsets that do not depend on the source model."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from robust_transfer.data import balanced_subset
from robust_transfer.engine import transfer
from robust_transfer.engine.transfer import Recipe, finetune
from robust_transfer.errors import ConfigError
from robust_transfer.models import build_architecture

RECIPE = Recipe(batch_size=64, lr=0.05)


def run(source, train, test, **kwargs):
    kwargs = {"n": 300, "unfrozen": 0, "epochs": 3, "seed": 0, "recipe": RECIPE, "device": "cpu",
              **kwargs}
    return finetune(source, train, test, **kwargs)


@pytest.mark.parametrize("unfrozen", [0, 1])
def test_cached_prefix_equals_uncached(digits_model, digits_train, digits_test, monkeypatch, unfrozen):
    cached = run(digits_model, digits_train, digits_test, unfrozen=unfrozen)
    monkeypatch.setattr(transfer, "PREFIX_MEMORY_LIMIT", 0)  # forces the whole-model path
    whole = run(digits_model, digits_train, digits_test, unfrozen=unfrozen)
    assert cached.cached_prefix and not whole.cached_prefix
    assert np.array_equal(cached.train_indices, whole.train_indices)
    # Same subset, head init, batch order and inputs; the only difference is that the prefix
    # ran in batches of 256 instead of the training batches, which may change the last bits
    # of a convolution's output. Agreement to ~1e-5 is what equal computations give.
    for a, b in zip(cached.history, whole.history, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.train_acc == pytest.approx(b.train_acc, abs=1 / 300 + 1e-9)
        assert a.test_acc == pytest.approx(b.test_acc, abs=1 / len(digits_test) + 1e-9)
    sa, sb = cached.model.state_dict(), whole.model.state_dict()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-3, atol=1e-4, msg=key)
    x = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(cached.model(x), whole.model(x), rtol=1e-3, atol=1e-4)
    assert cached.test_acc > 0.8  # features of a digits-trained source separate digits


def _hook_backbone(model, calls: list) -> None:
    def hook(module, args, out):
        calls.append((torch.is_grad_enabled(), out.requires_grad))
    model.blocks()[-1].register_forward_hook(hook)  # the last block: runs only if the backbone does


def test_zero_unfrozen_caches_features_and_never_runs_the_backbone_in_training(
        digits_model, digits_train, digits_test):
    source = copy.deepcopy(digits_model)
    calls = []
    _hook_backbone(source, calls)  # deepcopy inside finetune keeps the hook
    result = run(source, digits_train, digits_test, epochs=4)
    assert result.cached_prefix and result.info["frozen_depth"] == len(result.model.stages())
    # once per batch of 256 for the 300 train and 449 test images, not once per epoch
    assert len(calls) == math.ceil(300 / 256) + math.ceil(len(digits_test) / 256)
    assert not any(grad_enabled or needs_grad for grad_enabled, needs_grad in calls)


def test_zero_unfrozen_without_cache_runs_backbone_without_autograd(
        digits_model, digits_train, digits_test):
    source = copy.deepcopy(digits_model)
    calls = []
    _hook_backbone(source, calls)
    recipe = Recipe(batch_size=64, lr=0.05, augment=True)  # augmented training images: not cached
    result = run(source, digits_train, digits_test, n=128, epochs=2, recipe=recipe)
    assert result.info["cache"] == {"depth": 4, "pooled": True, "train": False, "test": True}
    # 2 epochs x 2 training batches through the backbone, plus the test images' prefix once
    assert len(calls) == 2 * 2 + math.ceil(len(digits_test) / 256)
    assert not any(needs_grad for _, needs_grad in calls)
    assert result.history[-1].train_loss < result.history[0].train_loss + 1.0


def test_subset_does_not_depend_on_the_source(digits_model, digits_train, digits_test):
    torch.manual_seed(1)
    other = build_architecture("small_resnet", 10, input_size=16)
    a = run(digits_model, digits_train, digits_test, n=120, epochs=1, seed=4)
    b = run(other, digits_train, digits_test, n=120, epochs=1, seed=4)
    expected = balanced_subset(digits_train.labels.numpy(), 120, 4, "digits")
    assert np.array_equal(a.train_indices, expected) and np.array_equal(b.train_indices, expected)
    assert a.n_train == 120 and np.bincount(digits_train.labels.numpy()[expected]).tolist() == [12] * 10


def test_source_is_not_modified(digits_model, digits_train, digits_test):
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    result = run(digits_model, digits_train, digits_test, unfrozen="all", n=64, epochs=1)
    assert not result.cached_prefix and result.model is not digits_model
    for key, value in digits_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert result.model.num_classes == 10 and not result.model.training


class CountingStore:
    """A feature store that keeps rows by (key, index) and counts what it computes."""

    def __init__(self):
        self.rows, self.keys, self.computed = {}, [], 0

    def get_or_compute(self, key, indices, compute):
        k = key  # a PrefixKey: frozen, so hashable
        self.keys.append(key)
        missing = [i for i in indices.tolist() if (k, i) not in self.rows]
        if missing:
            self.computed += len(missing)
            for i, row in zip(missing, compute(np.asarray(missing)), strict=True):
                self.rows[(k, i)] = row
        return torch.stack([self.rows[(k, i)] for i in indices.tolist()])


def test_feature_store_is_shared_between_runs(digits_model, digits_train, digits_test):
    store = CountingStore()
    first = run(digits_model, digits_train, digits_test, n=100, epochs=1, feature_store=store,
                source_id="src-1")
    assert store.computed == 100 + len(digits_test)
    assert {k.split for k in store.keys} == {"train", "test"}
    assert all(k.source == "src-1" and k.dataset == "digits" and k.pooled for k in store.keys)
    second = run(digits_model, digits_train, digits_test, n=200, epochs=1, feature_store=store,
                 source_id="src-1")
    assert store.computed == 200 + len(digits_test)  # nested subsets: only 100 new images
    assert second.n_train == 200 and first.cached_prefix
    run(digits_model, digits_train, digits_test, n=100, epochs=1, feature_store=store,
        source_id="src-2")
    assert store.computed == 300 + 2 * len(digits_test)  # another source shares nothing


def test_prefix_outputs_restore_the_mode_and_weights_id_sees_every_byte(digits_model, digits_test):
    model = copy.deepcopy(digits_model).eval()
    from robust_transfer.data import InputPolicy

    feats = transfer.prefix_outputs(model, digits_test.images[:5], InputPolicy(3, 16),
                                    len(model.stages()), True, torch.device("cpu"))
    assert feats.shape == (5, model.feature_dim) and not model.training
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.net.layer3[0].conv2.weight.view(-1)[-1] += 1.0  # the last value of a big tensor
    assert transfer._weights_id(other) != transfer._weights_id(model)
    assert transfer._weights_id(copy.deepcopy(model)) == transfer._weights_id(model)


def test_finetune_errors(digits_model, digits_train, digits_test):
    with pytest.raises(ConfigError, match="1348"):
        run(digits_model, digits_train, digits_test, n=5000)
    with pytest.raises(ConfigError, match="3 blocks"):
        run(digits_model, digits_train, digits_test, unfrozen=4)
    with pytest.raises(ConfigError):
        Recipe(batch_size=0)
    with pytest.raises(ConfigError):
        Recipe(augment="sometimes")
    with pytest.raises(ConfigError):
        Recipe(lr=-0.1)


# --- what is cached, and that caching changes nothing ------------------------------------
RESNET50_BYTES = {0: 8 * 1024, 1: 2048 * 7 * 7 * 4, 3: 1024 * 14 * 14 * 4, 9: 512 * 28 * 28 * 4,
                  "all": 0}  # DESIGN.md: 8 KiB, 392 KiB, 784 KiB, 1.5 MiB


@pytest.mark.parametrize("unfrozen", sorted(RESNET50_BYTES, key=str))
def test_prefix_bytes_per_image_of_resnet50(unfrozen):
    with torch.device("meta"):
        model = build_architecture("resnet50")
    assert transfer.prefix_bytes_per_image(model, unfrozen, 224) == RESNET50_BYTES[unfrozen]
    assert transfer.prefix_bytes_per_image(model, unfrozen, 224, "float16") == RESNET50_BYTES[unfrozen] // 2


def test_prefix_bytes_per_image_matches_a_real_forward(digits_model):
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    for unfrozen in (0, 1, 2):
        depth = transfer.frozen_depth_for(len(digits_model.blocks()), unfrozen)
        with torch.no_grad():
            h = digits_model.forward_prefix(torch.rand(1, 3, 20, 20), depth)
        expected = (digits_model.feature_dim if unfrozen == 0 else h.numel()) * 4
        assert transfer.prefix_bytes_per_image(digits_model, unfrozen, 20) == expected
    assert all(torch.equal(v, before[k]) for k, v in digits_model.state_dict().items())


def test_cache_plan():
    plan = transfer.cache_plan
    assert plan(16, 0, False) == transfer.CachePlan(17, True, True, True)
    assert plan(16, 3, True) == transfer.CachePlan(14, False, False, True)  # augmented: test only
    assert plan(16, "all", False) == transfer.CachePlan(0, False, False, False)
    # in-memory limit: the test outputs are kept first, then the training ones if they fit
    assert plan(16, 3, False, bytes_per_image=10, n_train=50, n_test=50, memory_limit=600) == \
        transfer.CachePlan(14, False, False, True)
    assert plan(16, 3, False, bytes_per_image=10, n_train=5, n_test=61, memory_limit=600) == \
        transfer.CachePlan(14, False, True, False)
    assert not plan(16, 3, False, bytes_per_image=10, n_train=61, n_test=61, memory_limit=600).any
    # a disk store maps the test outputs instead of holding them: any size is cached
    assert plan(16, 3, False, bytes_per_image=10, n_train=50, n_test=10**6, memory_limit=600,
                test_on_disk=True) == transfer.CachePlan(14, False, True, True)


@pytest.mark.parametrize("augment", [True, False])
@pytest.mark.parametrize("unfrozen", [0, 1, "all"])
def test_cached_and_uncached_accuracies_are_equal(digits_model, digits_train, digits_test,
                                                  monkeypatch, unfrozen, augment):
    recipe = Recipe(batch_size=64, lr=0.05, augment=augment)
    kwargs = dict(n=128, unfrozen=unfrozen, epochs=2, recipe=recipe)
    cached = run(digits_model, digits_train, digits_test, **kwargs)
    monkeypatch.setattr(transfer, "PREFIX_MEMORY_LIMIT", 0)  # nothing fits: the whole model
    whole = run(digits_model, digits_train, digits_test, **kwargs)
    assert cached.cached_prefix == (unfrozen != "all") and not whole.cached_prefix
    assert cached.info["cache"]["train"] == (not augment and unfrozen != "all")
    assert [m.test_acc for m in cached.history] == [m.test_acc for m in whole.history]
    for a, b in zip(cached.history, whole.history, strict=True):
        assert a.test_loss == pytest.approx(b.test_loss, rel=1e-5)
        if augment:  # the same computation on the training side: bit for bit
            assert a.train_loss == b.train_loss


def test_float16_storage_changes_accuracy_by_at_most_one_point(digits_model, digits_train, digits_test):
    # The stated bound (module docstring): measured on digits and Fashion-MNIST; here on digits
    # at head-only and one unfrozen block.
    for unfrozen in (0, 1):
        full = run(digits_model, digits_train, digits_test, unfrozen=unfrozen)
        half = run(digits_model, digits_train, digits_test, unfrozen=unfrozen,
                   recipe=Recipe(batch_size=64, lr=0.05, feature_dtype="float16"))
        assert half.info["feature_dtype"] == "float16" and half.cached_prefix
        assert abs(half.test_acc - full.test_acc) <= 0.01


def test_float16_rounding_stays_within_its_elementwise_bound(digits_model, digits_test):
    from robust_transfer.data import InputPolicy

    h = transfer.prefix_outputs(digits_model, digits_test.images, InputPolicy(3, 16), 3, False)
    stored = transfer.to_storage(h, "float16").float()
    bound = torch.maximum(h.abs() * 2.0**-11, torch.full_like(h, 2.0**-25))
    assert (stored - h).abs().le(bound).all() and h.abs().max() > 1.0


def test_float16_storage_of_an_out_of_range_prefix_is_refused(digits_model, digits_train, digits_test):
    loud = copy.deepcopy(digits_model)
    with torch.no_grad():
        loud.normalizer.std.mul_(1e-6)  # prefix outputs around 1e6: beyond float16
    half = Recipe(batch_size=64, lr=0.05, feature_dtype="float16")
    with pytest.raises(transfer.HalfPrecisionError, match="65504.*float32"):
        run(loud, digits_train, digits_test, n=50, epochs=1, recipe=half)
    assert math.isfinite(run(loud, digits_train, digits_test, n=50, epochs=1).history[0].train_loss)


def test_feature_dtype_enters_the_config_only_when_not_float32():
    assert "feature_dtype" not in Recipe().to_dict()
    assert Recipe(feature_dtype="float16").to_dict()["feature_dtype"] == "float16"
    assert Recipe(**Recipe(feature_dtype="float16").to_dict()) == Recipe(feature_dtype="float16")
    with pytest.raises(ConfigError, match="feature_dtype"):
        Recipe(feature_dtype="bfloat16")


def test_influence_features_are_prefix_outputs_and_the_mode_is_restored_on_errors(digits_model, digits_test):
    from robust_transfer.data import InputPolicy
    from robust_transfer.influence import extract_features

    policy = InputPolicy(3, 16)
    model = copy.deepcopy(digits_model).train()
    feats = extract_features(model, digits_test.images[:20], policy, batch_size=8)
    same = transfer.prefix_outputs(model, digits_test.images[:20], policy, len(model.stages()), True)
    assert feats.dtype == torch.float64 and torch.equal(feats, same.double()) and model.training
    with pytest.raises(RuntimeError):
        transfer.prefix_outputs(model, torch.zeros(2, 5, 16, 16, dtype=torch.uint8), policy, 2, False)
    assert model.training, "the mode is restored even when the forward fails"


def test_streamed_run_equals_device_resident_run(digits_model, digits_train, digits_test, caplog):
    """A budget nothing fits streams every split from host memory: same results, one log line."""
    from robust_transfer.data.loader import DeviceBudget

    recipe = Recipe(batch_size=64, lr=0.05, augment=True, val_images=40)
    kw = {"unfrozen": 1, "epochs": 2, "n": 120, "recipe": recipe}
    torch.manual_seed(0)
    resident = run(digits_model, digits_train, digits_test, data_budget=DeviceBudget(10**9), **kw)
    with caplog.at_level("INFO", logger="robust_transfer.engine.transfer"):
        streamed = run(digits_model, digits_train, digits_test, data_budget=DeviceBudget(1), **kw)
    assert resident.info["streamed"] == [] and resident.info["device_bytes"] > 0
    assert streamed.info["streamed"] == ["training images", "cached test outputs",
                                         "cached validation outputs"]
    lines = [r.getMessage() for r in caplog.records if "streamed" in r.getMessage()]
    assert len(lines) == 1 and "training images" in lines[0]
    for a, b in zip(resident.history, streamed.history, strict=True):
        assert (a.train_loss, a.test_acc, a.val_acc) == (b.train_loss, b.test_acc, b.val_acc)
