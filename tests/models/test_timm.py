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
from robust_transfer.errors import CheckpointError, ConfigError, UnknownNameError  # noqa: E402
from robust_transfer.influence.core import influence_for_model  # noqa: E402
from robust_transfer.models import build_architecture, load_model, prepare_finetune, save_model  # noqa: E402
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


@pytest.mark.parametrize("family", sorted(SPECS))
def test_checkpoint_round_trip(tmp_path, family):
    model = prepare_finetune(make(family), 3, 1).eval()
    path = save_model(model, tmp_path / "tuned", {"training": "natural"})
    loaded, meta = load_model(path)
    name, kwargs = SPECS[family]
    assert meta["arch"] == f"timm:{name}" and loaded.input_size == SIZE
    assert meta.get("arch_kwargs", {}) == kwargs  # the ViT's depth=2, patch 8 come back
    x = torch.rand(2, 3, SIZE, SIZE)
    assert torch.equal(loaded(x), model(x))
    fresh = build_architecture(f"timm:{name}", 3, input_size=SIZE, **kwargs)  # timm's normaliser
    assert torch.equal(fresh.normalizer.std, model.normalizer.std)


def test_model_pickles(source):  # executors may ship models between processes
    import pickle

    clone = pickle.loads(pickle.dumps(source))
    x = torch.rand(2, 3, SIZE, SIZE)
    assert torch.equal(clone.eval()(x), copy.deepcopy(source).eval()(x))


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


def test_pretrained_weights_offline_is_one_line(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", "/nonexistent-rt-test")
    with pytest.raises(CheckpointError, match="cannot fetch pretrained weights of timm model") as err:
        create_timm_source("convnext_atto", pretrained=True)
    assert "\n" not in str(err.value)


def test_bad_timm_arguments_are_a_config_error():
    with pytest.raises(ConfigError, match="timm cannot build 'convnext_atto'"):
        create_timm_source("convnext_atto", depths="x")


def test_too_many_unfrozen_blocks():
    with pytest.raises(ConfigError, match="has 4 blocks"):
        prepare_finetune(make("convnext"), 3, 5)


# --- published timm-architecture models: files in RobustBench's format ------------------


def test_zoo_lists_the_robustbench_models():
    from robust_transfer.models.zoo import get_published

    entry = get_published("singh2023-convnext-b-convstem-linf-eps4")
    assert entry.arch == "timm:singh2023_convnext_base_convstem" and entry.eps_label == "4/255"
    assert (entry.clean_acc, entry.robust_acc) == (0.759, 0.5614)
    assert entry.file == "Singh2023Revisiting_ConvNeXt-B-ConvStem.pt"
    assert "1-lE-waaVvfL7lgBrydmZIM9UJimmHnVe" in entry.url


@pytest.mark.slow
def test_singh_convstem_file_loads_through_the_zoo(tmp_path, monkeypatch):
    """Full-size ConvNeXt-T + ConvStem, random weights saved as DataParallel would
    (``module.`` keys under ``state_dict``), loaded by zoo name with weights_only."""
    from robust_transfer.models.sources import load_source
    from robust_transfer.models.zoo import get_published

    entry = get_published("singh2023-convnext-t-convstem-linf-eps4")
    torch.manual_seed(0)
    reference = create_timm_source(entry.timm_name).eval()
    assert "stem.stem.0.weight" in reference.net.state_dict()  # RobustBench's key names
    state = {f"module.{k}": v for k, v in reference.net.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 300}, tmp_path / entry.file)
    monkeypatch.setenv("ROBUST_TRANSFER_ZOO", str(tmp_path))
    model = load_source(entry.name)
    meta = model.source_record.metadata
    x = torch.rand(1, 3, 224, 224)
    assert torch.equal(model(x), reference(x))
    assert meta["mean"] == [0.0] * 3 and meta["std"] == [1.0] * 3  # no normaliser (RobustBench)
    assert len(model.blocks()) == 4 and meta["format"] == "robustbench"


def test_liu_swin_file_in_old_timm_layout_loads(tmp_path):
    """A Swin file as timm < 0.9 wrote it (downsample at the end of a stage, ``head.``,
    persistent relative_position_index), under RobustBench's ``module.model.`` prefix;
    a shallower Swin-B with the same key layout keeps the test fast."""
    import re

    from robust_transfer.models.zoo import get_published

    entry = get_published("liu2023-swin-b-linf-eps4")
    small = {"depths": (1, 1, 1, 1), "embed_dim": 32, "num_heads": (1, 1, 1, 1)}
    torch.manual_seed(0)
    reference = create_timm_source(entry.timm_name, **small).eval()
    old = {}
    for k, v in reference.net.state_dict().items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        old[f"module.model.{k.replace('head.fc.', 'head.')}"] = v
    old["module.model.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    assert "module.model.layers.0.downsample.reduction.weight" in old
    path = tmp_path / entry.file
    torch.save(old, path)
    model, meta = entry.load_checkpoint(path, **small)
    x = torch.rand(1, 3, 224, 224)
    assert torch.equal(model(x), reference(x))
    assert meta["std"] == pytest.approx([0.229, 0.224, 0.225])


def test_file_that_pickles_code_is_refused(tmp_path):
    from robust_transfer.errors import CheckpointError
    from robust_transfer.models.zoo import get_published

    entry = get_published("liu2023-convnext-b-linf-eps4")
    path = tmp_path / entry.file
    torch.save({"state_dict": {}, "args": _Args()}, path)
    with pytest.raises(CheckpointError, match="refusing to load|cannot read"):
        entry.load_checkpoint(path, depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))


class _Args:  # stands for an argparse.Namespace pickled beside the weights
    lr = 0.1
