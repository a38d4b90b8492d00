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
from robust_transfer.models import create_model

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
    recipe = Recipe(batch_size=64, lr=0.05, augment=True)  # augmentation: no cache possible
    result = run(source, digits_train, digits_test, n=128, epochs=2, recipe=recipe)
    assert not result.cached_prefix and len(calls) >= 4
    assert not any(needs_grad for _, needs_grad in calls)
    assert result.history[-1].train_loss < result.history[0].train_loss + 1.0


def test_subset_does_not_depend_on_the_source(digits_model, digits_train, digits_test):
    torch.manual_seed(1)
    other = create_model("small_resnet", 10, input_size=16)
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
        k = tuple(sorted(key.items()))
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
    assert {k["split"] for k in store.keys} == {"train", "test"}
    assert all(k["source"] == "src-1" and k["dataset"] == "digits" and k["pooled"] for k in store.keys)
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
