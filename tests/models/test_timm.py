"""timm backbones behind the blocks view: fine-tuning with k = 0, 1, all and influence.

Random weights, tiny configurations, digits upsampled to 32 px: a ViT (2 transformer
blocks, patch 8) and ConvNeXt-atto (4 stages). The invariants are those of the ResNets:
frozen parameters and buffers bit-identical after fine-tuning, every trainable parameter
gets a gradient, frozen parts in eval mode.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("timm")

from robust_transfer.engine.transfer import Recipe, finetune  # noqa: E402
from robust_transfer.errors import ConfigError, UnknownNameError  # noqa: E402
from robust_transfer.influence.core import influence_for_model  # noqa: E402
from robust_transfer.models import create_model, load_model, prepare_finetune, save_model  # noqa: E402
from robust_transfer.models.timm_backbone import create_timm_source  # noqa: E402

SIZE = 32
SPECS = {
    "vit": ("vit_tiny_patch16_224", {"patch_size": 8, "depth": 2}),
    "convnext": ("convnext_atto", {}),
}


def make(family: str, num_classes: int = 10):
    name, kwargs = SPECS[family]
    torch.manual_seed(0)
    return create_timm_source(name, num_classes=num_classes, input_size=SIZE, **kwargs)


@pytest.fixture(scope="module", params=sorted(SPECS))
def source(request):
    return make(request.param)


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("unfrozen", [0, 1, "all"])
def test_trainable_parameters_follow_the_blocks_view(source, unfrozen):
    model = prepare_finetune(copy.deepcopy(source), 5, unfrozen)
    x = torch.rand(4, 3, SIZE, SIZE)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    names = trainable_names(model)
    head = {f"net.{n}" for n, _ in _named(model, model.head)}
    last = {f"net.{n}" for n, _ in _named(model, model.blocks()[-1])}
    stem = {f"net.{n}" for n, _ in _named(model, model.stem())}
    if unfrozen == 0:
        assert names == head
    elif unfrozen == 1:
        neck = {f"net.{n}" for m in model.neck() for n, _ in _named(model, m)}
        assert neck and head | last | neck <= names and not names & stem  # final norms train too
        assert len(model.blocks()) > 1 and not names & {f"net.{n}" for n, _ in _named(model, model.blocks()[-2])}
    else:
        assert names == {n for n, _ in model.named_parameters()}
    for n, p in model.named_parameters():
        if p.requires_grad:  # every trainable parameter receives a gradient
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    model.train()  # frozen stages (and with k = 0 the neck) stay in eval mode
    frozen = model.stages()[: model.frozen_depth] + (model.neck() if unfrozen == 0 else [])
    inner = [s for m in frozen for s in m.modules() if s is not m]  # stems are fresh wrappers
    assert (len(inner) > 0) == (unfrozen != "all") and all(not s.training for s in inner)
    assert model.head.training


def _named(model, module):
    """(name inside model.net, parameter) for the parameters of a submodule."""
    ids = {id(p) for p in module.parameters()}
    return [(n, p) for n, p in model.net.named_parameters() if id(p) in ids]


@pytest.mark.parametrize("unfrozen", [0, 1, "all"])
def test_finetune_keeps_frozen_bit_identical(source, unfrozen, digits_train, digits_test):
    result = finetune(source, digits_train, digits_test.subset(np.arange(30)), n=40,
                      unfrozen=unfrozen, epochs=1, recipe=Recipe(batch_size=20, lr=0.01),
                      device="cpu")
    before = source.state_dict()
    tuned = result.model
    moved = {n for n, t in tuned.state_dict().items()
             if n in before and t.shape == before[n].shape and not torch.equal(t, before[n])}
    trainable = trainable_names(tuned)
    frozen = set(before) - trainable - {n for n in before if n.startswith(_head_prefix(tuned))}
    assert not moved & frozen, f"frozen tensors changed: {sorted(moved & frozen)[:3]}"
    body = trainable - {n for n in trainable if n.startswith(_head_prefix(tuned))}
    assert body <= moved  # every trainable backbone parameter was updated
    assert (unfrozen == 0) == (not body)
    assert np.isfinite(result.test_acc)


def _head_prefix(model) -> str:
    return "net." + next(n for n, m in model.net.named_modules() if m is model.head)


def test_influence_on_pooled_features(source, digits_train, digits_test):
    model = prepare_finetune(copy.deepcopy(source), 10, 0).eval()
    train, test = digits_train.subset(np.arange(24)), digits_test.subset(np.arange(6))
    result = influence_for_model(model, train, test)
    assert result.scores.shape == (6, 24) and np.isfinite(result.scores).all()
    assert (result.self_influence <= 1e-9).all()
    # on the pooled features: (C - 1) x (d + 1) in the reduced softmax parametrisation
    assert result.info["hessian_dimension"] == 9 * (model.feature_dim + 1)


def test_checkpoint_round_trip(tmp_path):
    model = prepare_finetune(make("convnext"), 3, 1).eval()
    path = save_model(model, tmp_path / "tuned", {"training": "natural"})
    loaded, meta = load_model(path)
    assert meta["arch"] == "timm:convnext_atto" and loaded.input_size == SIZE
    x = torch.rand(2, 3, SIZE, SIZE)
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(create_model("timm:convnext_atto", 3, input_size=SIZE).normalizer.std,
                       model.normalizer.std)


def test_normaliser_comes_from_timm_config():
    vit = make("vit")  # augreg ViTs were trained with mean = std = 0.5
    assert vit.normalizer.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert make("convnext").normalizer.std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])


def test_unknown_timm_name_suggests():
    with pytest.raises(UnknownNameError, match="did you mean .*convnext_atto"):
        create_timm_source("convnext_ato")


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "deit_tiny_distilled_patch16_224"])
def test_model_without_blocks_view_names_supported_families(name):
    with pytest.raises(ConfigError, match="no blocks view; supported: VisionTransformer.*ConvNeXt") as err:
        create_timm_source(name, input_size=SIZE)
    assert "\n" not in str(err.value)


def test_too_many_unfrozen_blocks():
    with pytest.raises(ConfigError, match="has 4 blocks"):
        prepare_finetune(make("convnext"), 3, 5)
