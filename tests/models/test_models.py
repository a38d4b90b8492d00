"""Architectures, the blocks view and freezing for fine-tuning.

The central invariant: after a few fine-tuning steps every trainable parameter got a
gradient and moved, while every frozen parameter and every BatchNorm buffer of a frozen
stage is bit-identical.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robust_transfer.engine.training import FitOptions, OptimConfig, TensorLoader, fit
from robust_transfer.errors import ConfigError, UnknownNameError
from robust_transfer.models import ARCHS, build_architecture, prepare_finetune, set_unfrozen_blocks

TINY = {"small_resnet": 16, "resnet18": 32}  # input sizes that keep these fast on a CPU


def make(arch: str, num_classes: int = 10, seed: int = 0):
    torch.manual_seed(seed)
    model = build_architecture(arch, num_classes, input_size=TINY.get(arch))
    # give BatchNorm non-trivial statistics and affine parameters, as a trained source has
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model


def trainable_stage_flags(model, unfrozen) -> list[bool]:
    """For each stage (stem, blocks...): should it train?"""
    n = len(model.stages())
    if unfrozen == "all":
        return [True] * n
    return [i >= n - unfrozen for i in range(n)]


def finetune_steps(model, size: int, steps: int = 3, classes: int = 5) -> None:
    """A few SGD steps through the library's training loop on random data."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8 * steps, 3, size, size, generator=gen)
    y = torch.randint(0, classes, (8 * steps,), generator=gen)
    loader = TensorLoader(x, y, batch_size=8, shuffle=True)
    fit(model, loader, None, FitOptions(epochs=1, optim=OptimConfig(lr=0.05), device="cpu"))


@pytest.mark.parametrize("arch", ["small_resnet", "resnet18"])
@pytest.mark.parametrize("unfrozen", [0, 1, "all"])
def test_frozen_stays_bit_identical_and_trainable_moves(arch, unfrozen):
    size = TINY[arch]
    model = prepare_finetune(make(arch), 5, unfrozen, seed=0)
    flags = trainable_stage_flags(model, unfrozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    # every trainable parameter gets a non-zero gradient; frozen ones get none
    model.train()
    x = torch.rand(4, 3, size, size)
    F.cross_entropy(model(x), torch.arange(4) % 5).backward()
    for stage, trains in zip(model.stages(), flags, strict=True):
        for name, p in stage.named_parameters():
            assert p.requires_grad == trains, name
            if trains:
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            else:
                assert p.grad is None, name
    for p in model.head.parameters():
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)

    finetune_steps(model, size)
    after = model.state_dict()
    for stage, trains in zip(model.stages(), flags, strict=True):
        names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}
        tensors = list(stage.parameters()) + list(stage.buffers())
        for t in tensors:
            key = names[id(t)]
            if trains:
                if t.dtype.is_floating_point:
                    assert not torch.equal(before[key], after[key]), f"{key} did not train"
            else:
                assert torch.equal(before[key], after[key]), f"frozen {key} changed"
    assert not torch.equal(before["net.fc.weight"], after["net.fc.weight"])


def test_frozen_stages_stay_in_eval_mode():
    model = prepare_finetune(make("small_resnet"), 5, 1)
    model.train()
    stages = model.stages()  # the stem is a fresh Sequential view: check its members
    assert not any(m.training for m in stages[0].children())
    for stage in stages[1:-1]:
        assert not any(m.training for m in stage.modules())
    assert all(m.training for m in stages[-1].modules())
    assert model.head.training and model.training
    model.eval()
    assert not any(m.training for m in model.modules())


def test_set_unfrozen_keeps_the_mode():
    model = make("small_resnet").eval()
    set_unfrozen_blocks(model, "all")
    assert not model.training
    model.train()
    set_unfrozen_blocks(model, 0)
    assert model.training and not model.stages()[0][1].training


def test_resnet50_blocks_and_paper_choices():
    model = build_architecture("resnet50", 10)
    names = model.block_names()
    assert len(names) == 16 and names[0] == "layer1.0" and names[-1] == "layer4.2"
    for k in (0, 1, 3, 9, 16, "all"):
        set_unfrozen_blocks(model, k)
        trainable = {n.split(".")[1] + "." + n.split(".")[2] for n, p in model.named_parameters()
                     if p.requires_grad and n.startswith("net.layer")}
        expected = set(names) if k == "all" else set(names[len(names) - k:])
        assert trainable == expected, k
        stem_trains = model.net.conv1.weight.requires_grad
        assert stem_trains == (k == "all")
        assert model.head.weight.requires_grad
    set_unfrozen_blocks(model, "3")  # as the CLI passes it
    assert model.frozen_depth == 1 + 16 - 3


@pytest.mark.parametrize("arch,blocks", [("small_resnet", 3), ("resnet18", 8), ("resnet50", 16)])
def test_too_many_unfrozen_blocks(arch, blocks):
    model = build_architecture(arch, 10)
    assert len(model.blocks()) == blocks
    set_unfrozen_blocks(model, blocks)
    with pytest.raises(ConfigError, match=f"{blocks} blocks"):
        set_unfrozen_blocks(model, blocks + 1)
    for bad in (-1, "two", "1.5"):
        with pytest.raises(ConfigError):
            set_unfrozen_blocks(model, bad)


def test_frozen_prefix_runs_without_autograd_unless_input_needs_grad():
    model = prepare_finetune(make("small_resnet"), 5, 0).eval()
    seen = []
    last_frozen = model.stages()[-1]
    handle = last_frozen.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    x = torch.rand(3, 3, 16, 16)
    out = model(x)
    assert seen == [False] and out.requires_grad  # the head still trains

    # input gradients (attacks, saliency) still flow through the frozen prefix
    x.requires_grad_(True)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2]))
    grad, = torch.autograd.grad(loss, x)
    handle.remove()
    assert seen[-1] is True
    reference = copy.deepcopy(model)
    set_unfrozen_blocks(reference, "all")
    reference.eval()
    x_ref = x.detach().clone().requires_grad_(True)
    grad_ref, = torch.autograd.grad(F.cross_entropy(reference(x_ref), torch.tensor([0, 1, 2])), x_ref)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=0)
    for p in model.parameters():
        assert p.grad is None  # autograd.grad on the input leaves weights alone


@pytest.mark.parametrize("depth", [0, 1, 2, 4])
def test_prefix_and_suffix_compose_to_forward(depth):
    model = make("small_resnet").eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        full = model(x)
        split = model.forward_from(model.forward_prefix(x, depth), depth)
        feats = model.features(x)
    torch.testing.assert_close(split, full, rtol=0, atol=0)
    assert feats.shape == (2, model.feature_dim)
    torch.testing.assert_close(model.head(feats), full)


def test_normaliser_lives_inside_the_model():
    model = build_architecture("small_resnet", 10, mean=(0.2, 0.4, 0.6), std=(0.1, 0.2, 0.3)).eval()
    x = torch.rand(2, 3, 28, 28)
    mean = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    std = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - mean) / std))
    assert "normalizer.mean" in model.state_dict()


def test_reset_classifier_is_seeded():
    a = prepare_finetune(make("small_resnet"), 7, 0, seed=3)
    b = prepare_finetune(make("small_resnet", seed=1), 7, 0, seed=3)
    c = prepare_finetune(make("small_resnet"), 7, 0, seed=4)
    assert a.head.weight.shape == (7, 64) and a.num_classes == 7
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)
    assert a.head.bias.abs().sum() == 0
    paper = prepare_finetune(make("small_resnet"), 50, 0, head_init="paper")
    assert 0.8 < paper.head.weight.std() < 1.2
    with pytest.raises(ConfigError, match="head init"):
        prepare_finetune(make("small_resnet"), 5, 0, head_init="xavier")


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(UnknownNameError) as err:
        build_architecture("resnet1000")
    for name in ARCHS.names():
        assert name in str(err.value)
    assert {"resnet18", "resnet50", "wide_resnet50_2", "small_resnet"} <= set(ARCHS.names())


def test_eval_mode_restores_each_submodules_own_mode():
    import torch.nn as nn

    from robust_transfer.models.modes import eval_mode

    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout())
    net.train()
    net[1].eval()  # a frozen BatchNorm inside a training model
    try:
        with eval_mode(net):
            assert not any(m.training for m in net.modules())
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert net.training and net[0].training and not net[1].training and net[2].training
