"""The training loop: batching, schedule, seeding, evaluation, natural and adversarial fits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from robust_transfer.data import InputPolicy
from robust_transfer.engine.attacks import AttackConfig
from robust_transfer.engine.training import FitOptions, OptimConfig, TensorLoader, evaluate, fit
from robust_transfer.errors import ConfigError
from robust_transfer.models import build_architecture, set_unfrozen_blocks


def features_data(n: int = 96, d: int = 6, classes: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, d, generator=gen) + 2.0 * nn.functional.one_hot(y, d).float()
    return x, y


# --- TensorLoader -----------------------------------------------------------------------
def test_loader_covers_every_example_once_and_reshuffles_per_epoch():
    data, labels = torch.arange(10).float().view(10, 1), torch.arange(10)
    loader = TensorLoader(data, labels, batch_size=4, shuffle=True, seed=3)
    assert len(loader) == 3
    loader.set_epoch(1)
    first = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == list(range(10))
    assert [len(y) for _, y in loader] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in loader]), first)  # same epoch, same order
    loader.set_epoch(2)
    assert not torch.equal(torch.cat([y for _, y in loader]), first)
    for x, y in loader:
        assert torch.equal(x[:, 0].long(), y)  # images and labels stay paired
    plain = TensorLoader(data, labels, batch_size=4, transform=lambda x: x * 2)
    assert torch.cat([y for _, y in plain]).tolist() == list(range(10))
    assert torch.equal(next(iter(plain))[0], data[:4] * 2)


def test_loader_shards_for_distributed_training():
    data, labels = torch.zeros(11, 1), torch.arange(11)
    shards = [TensorLoader(data, labels, 2, shuffle=True, seed=1, rank=r, world_size=3) for r in range(3)]
    seen = [torch.cat([y for _, y in s]) for s in shards]
    assert {len(s) for s in shards} == {2} and [len(v) for v in seen] == [4, 4, 4]
    assert set(torch.cat(seen).tolist()) == set(range(11))  # all covered; one wrapped repeat


def test_loader_rejects_bad_batch_size():
    with pytest.raises(ConfigError):
        TensorLoader(torch.zeros(2, 1), torch.zeros(2), batch_size=0)


# --- schedule and configuration ---------------------------------------------------------
@pytest.mark.parametrize("epochs,expected", [
    (3, [0.1, 0.01, 0.001]),
    (6, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]),
    (10, [0.1] * 3 + [0.01] * 3 + [0.001] * 3 + [0.0001]),
    (2, [0.1, 0.01]),  # epochs // 3 == 0: every epoch (max(1, epochs // 3))
])
def test_step_schedule_divides_lr_by_10_every_third(epochs, expected):
    x, y = features_data()
    history = fit(nn.Linear(6, 3), TensorLoader(x, y, 32), None,
                  FitOptions(epochs=epochs, device="cpu"))
    assert [h.lr for h in history] == pytest.approx(expected, rel=1e-9)


def test_cosine_and_constant_schedules():
    x, y = features_data()
    cosine = fit(nn.Linear(6, 3), TensorLoader(x, y, 32), None,
                 FitOptions(epochs=4, optim=OptimConfig(schedule="cosine"), device="cpu"))
    assert [h.lr for h in cosine] == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 4)) / 2
                                                   for e in range(4)])
    constant = fit(nn.Linear(6, 3), TensorLoader(x, y, 32), None,
                   FitOptions(epochs=3, optim=OptimConfig(lr=0.3, schedule="constant"), device="cpu"))
    assert [h.lr for h in constant] == [0.3] * 3


def test_optimiser_uses_momentum_and_weight_decay():
    opt, _ = OptimConfig(lr=0.2, momentum=0.8, weight_decay=1e-3).build(list(nn.Linear(2, 2).parameters()), 3)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.2, 0.8, 1e-3)


@pytest.mark.parametrize("bad", [{"lr": 0}, {"lr": -1}, {"momentum": -0.1}, {"weight_decay": -1},
                                 {"schedule": "linear"}])
def test_bad_optim_config(bad):
    with pytest.raises(ConfigError):
        OptimConfig(**bad)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"eval_every": 0}])
def test_bad_fit_options(bad):
    with pytest.raises(ConfigError):
        FitOptions(**bad)


def test_nothing_to_train_is_an_error():
    model = nn.Linear(6, 3).requires_grad_(False)
    x, y = features_data()
    with pytest.raises(ConfigError, match="frozen"):
        fit(model, TensorLoader(x, y, 32), None, FitOptions(device="cpu"))


# --- fitting real data ------------------------------------------------------------------
def digits_loaders(train, test, policy, seed=0, batch_size=64):
    return (TensorLoader(train.images, train.labels, batch_size, shuffle=True,
                         transform=policy.train_batch, seed=seed),
            TensorLoader(test.images, test.labels, 256, transform=policy.prepare))


def test_fit_decreases_loss_on_digits(digits_train, digits_test):
    torch.manual_seed(0)
    model = build_architecture("small_resnet", 10, mean=(0.3,) * 3, std=(0.35,) * 3, input_size=12)
    train_loader, test_loader = digits_loaders(digits_train, digits_test, InputPolicy(3, 12))
    events = []
    history = fit(model, train_loader, test_loader,
                  FitOptions(epochs=3, optim=OptimConfig(lr=0.05, schedule="cosine"), device="cpu"),
                  callback=lambda event: events.append(event.kind))
    losses = [h.train_loss for h in history]
    assert losses[2] < losses[1] < losses[0]
    assert history[0].train_loss > 1.0 and history[-1].test_acc > 0.85
    assert all(h.seconds > 0 for h in history) and all(not math.isnan(h.test_acc) for h in history)
    assert events.count("epoch") == 3 and events.count("batch") == 3 * len(train_loader)
    assert model.training  # fit leaves the model in train mode; evaluate restored it


def test_eval_every_and_robust_accuracy(digits_train, digits_test):
    torch.manual_seed(0)
    model = build_architecture("small_resnet", 10, input_size=8)
    train = digits_train.subset(torch.arange(256))
    test = digits_test.subset(torch.arange(64))
    train_loader, test_loader = digits_loaders(train, test, InputPolicy(3, 8))
    history = fit(model, train_loader, test_loader,
                  FitOptions(epochs=3, eval_every=2, device="cpu",
                             eval_attack=AttackConfig("linf", 8 / 255, steps=2)))
    assert [math.isnan(h.test_acc) for h in history] == [True, False, False]
    assert all(h.robust_acc <= h.test_acc for h in history if not math.isnan(h.test_acc))
    assert not math.isnan(history[-1].robust_acc)


def _seeded_run(train, seed: int, adversary=None):
    torch.manual_seed(123)  # the model's init; fit seeds everything else from options.seed
    model = build_architecture("small_resnet", 10, input_size=8)
    policy = InputPolicy(3, 8, augment=True)  # augmentation draws from torch's global generator
    loader = TensorLoader(train.images, train.labels, 32, shuffle=True,
                          transform=policy.train_batch, seed=seed)
    history = fit(model, loader, None, FitOptions(epochs=2, adversary=adversary, seed=seed,
                                                  device="cpu"))
    return model.state_dict(), [h.train_loss for h in history]


@pytest.mark.parametrize("adversary", [None, AttackConfig("l2", 0.5, steps=2, random_start=True),
                                       AttackConfig("linf", 8 / 255, method="fgsm_rs")])
def test_seeded_runs_are_bit_identical(digits_train, adversary):
    train = digits_train.subset(torch.arange(128))
    state_a, loss_a = _seeded_run(train, 7, adversary)
    torch.manual_seed(999)  # the global generator's state before fit must not matter
    state_b, loss_b = _seeded_run(train, 7, adversary)
    assert loss_a == loss_b
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    state_c, loss_c = _seeded_run(train, 8, adversary)
    assert loss_c != loss_a


def test_adversarial_training_trains_on_attacked_inputs(digits_train):
    train = digits_train.subset(torch.arange(64))
    seen = []

    def record(model, x, y):
        seen.append((model.training, x.clone()))
        return AttackConfig("linf", 16 / 255, steps=2)(model, x, y)

    torch.manual_seed(0)
    model = build_architecture("small_resnet", 10, input_size=8)
    inputs = []
    model.register_forward_pre_hook(lambda m, args: inputs.append((m.training, args[0].clone())))
    loader = TensorLoader(train.images, train.labels, 32, transform=InputPolicy(3, 8).prepare)
    fit(model, loader, None, FitOptions(epochs=1, adversary=record, device="cpu"))
    train_inputs = [x for training, x in inputs if training]
    assert len(seen) == len(train_inputs) == 2
    for (_, clean), adv in zip(seen, train_inputs, strict=True):
        assert not torch.equal(clean, adv)
        assert (adv - clean).abs().max() <= 16 / 255 + 1e-6


def test_evaluate_restores_mode_and_attack_lowers_accuracy(digits_model, digits_test, digits_policy):
    test = digits_test.subset(torch.arange(128))
    loader = TensorLoader(test.images, test.labels, 64, transform=digits_policy.prepare)
    model = digits_model
    model.train()
    try:
        clean_loss, clean = evaluate(model, loader, None, "cpu")
        assert model.training
        _, robust = evaluate(model, loader, AttackConfig("l2", 1.0, steps=5), "cpu")
        assert model.training
    finally:
        model.eval()
    assert clean > 0.85 and robust < clean - 0.2 and clean_loss > 0


def test_fit_keeps_frozen_batchnorm(digits_train):
    torch.manual_seed(0)
    model = build_architecture("small_resnet", 10, input_size=8)
    set_unfrozen_blocks(model, 1)
    before = model.net.bn1.running_mean.clone()
    loader = TensorLoader(digits_train.images[:64], digits_train.labels[:64], 32,
                          transform=InputPolicy(3, 8).prepare)
    fit(model, loader, None, FitOptions(epochs=1, device="cpu"))
    assert torch.equal(model.net.bn1.running_mean, before)
