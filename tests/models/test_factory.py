"""robust_transfer.create_model / list_models: the one factory, exported at the top level."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

import robust_transfer as rt
from robust_transfer.models.sources import load_source


def test_create_model_resets_the_head_and_freezes_all_but_the_last_blocks():
    source = load_source("fmnist-l2-eps1")
    model = rt.create_model("fmnist-l2-eps1", num_classes=7, unfrozen_blocks=1, seed=3)
    assert model.num_classes == 7 and model.training and model.source_record.kind == "embedded"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    last = model.block_names()[-1]
    assert trainable == {n for n, _ in model.named_parameters()
                         if n.startswith((f"net.{last}.", "net.fc."))}
    frozen_source = dict(source.named_parameters())
    for name, p in model.named_parameters():
        if name not in trainable:
            assert torch.equal(p, frozen_source[name]), name
    again = rt.create_model("fmnist-l2-eps1", num_classes=7, unfrozen_blocks=1, seed=3)
    assert torch.equal(again.head.weight, model.head.weight), "the head is seeded"


def test_create_model_all_and_untrained():
    model = rt.create_model("fmnist-natural", unfrozen_blocks=rt.ALL)
    assert all(p.requires_grad for p in model.parameters()) and model.num_classes == 10
    random = rt.create_model("fmnist-natural", pretrained=False)
    loaded = load_source("fmnist-natural")
    assert random.arch == loaded.arch and random.input_size == loaded.input_size
    assert torch.equal(random.normalizer.mean, loaded.normalizer.mean)
    assert not torch.equal(random.net.conv1.weight, loaded.net.conv1.weight)


def test_create_model_refuses_in_one_line():
    with pytest.raises(rt.UnknownNameError, match="did you mean 'fmnist-natural'"):
        rt.create_model("fmnist-naturall")
    with pytest.raises(rt.ConfigError, match="has 3 blocks; cannot unfreeze 4"):
        rt.create_model("fmnist-natural", num_classes=10, unfrozen_blocks=4)


def test_list_models_by_pattern_and_kind():
    assert rt.list_models("fmnist-*") == ["fmnist-l2-eps0.25", "fmnist-l2-eps1",
                                          "fmnist-linf-eps0.1", "fmnist-natural"]
    assert rt.list_models(kind="torchvision") == ["torchvision-resnet50"]
    assert "resnet50-l2-eps3" in rt.list_models("*l2-eps3")
    assert rt.list_models("nothing-like-this*") == []


def test_import_is_cheap():
    code = ("import sys, robust_transfer as rt; rt.list_models(); "
            "print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_create_model_with_a_timm_name():
    if importlib.util.find_spec("robust_transfer.models.timm_backbone") is None:
        pytest.skip("robust_transfer.models.timm_backbone is not in this branch")
    pytest.importorskip("timm")
    model = rt.create_model("timm:resnet10t", num_classes=4, unfrozen_blocks=1, pretrained=False)
    assert model.num_classes == 4 and model.source_record.kind == "timm"
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)
