"""PGD (L2, Linf) and FGSM-RS: the threat model's invariants on a small trained model.

``digits_model`` (conftest) is a small ResNet trained on digits at 16 px; ``digits_batch``
is 200 of its test images in [0, 1].
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robust_transfer.engine.attacks import AttackConfig, fgsm_rs, pgd, project
from robust_transfer.engine.training import TensorLoader, evaluate
from robust_transfer.errors import ConfigError
from robust_transfer.models import set_unfrozen_blocks

TOL = 1e-5
EPS = {"l2": 1.0, "linf": 8 / 255}


def dist(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def losses(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


@pytest.fixture(scope="module")
def batch(digits_batch):
    x, y = digits_batch
    return x[:64], y[:64]


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("random_start,keep_best", [(False, False), (True, False), (True, True)])
def test_pgd_stays_in_ball_and_box(digits_model, batch, norm, random_start, keep_best):
    x, y = batch
    eps = EPS[norm] * 2
    torch.manual_seed(0)
    x_adv = pgd(digits_model, x, y, norm, eps, steps=5, random_init=random_start, keep_best=keep_best)
    d = dist(x_adv - x, norm)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert torch.all(d <= eps + TOL), float(d.max())
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (d > 0.9 * eps).float().mean() > 0.5  # the ball's boundary is reached: the check bites
    assert losses(digits_model, x_adv, y).mean() > losses(digits_model, x, y).mean()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_eps_zero_gives_clean_accuracy(digits_model, digits_test, digits_policy, norm):
    x, y = digits_policy.prepare(digits_test.images[:128]), digits_test.labels[:128]
    assert torch.equal(pgd(digits_model, x, y, norm, 0.0), x)
    loader = TensorLoader(digits_test.images[:128], digits_test.labels[:128], 64,
                          transform=digits_policy.prepare)
    clean = evaluate(digits_model, loader, None, "cpu")
    attacked = evaluate(digits_model, loader, AttackConfig(norm, 0.0, steps=5), "cpu")
    assert clean == attacked
    assert clean[1] > 0.85  # the model is trained: the other tests attack something real


@pytest.mark.parametrize("norm,eps_list", [
    ("l2", [0.0, 0.25, 0.5, 1.0, 2.0]),
    ("linf", [0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255]),
])
def test_attack_success_grows_with_eps(digits_model, digits_batch, norm, eps_list):
    x, y = digits_batch[0][:128], digits_batch[1][:128]
    accs = [accuracy(digits_model, pgd(digits_model, x, y, norm, eps, steps=7), y) for eps in eps_list]
    for smaller, larger in zip(accs, accs[1:], strict=False):
        assert larger <= smaller + 1 / len(y), accs  # one image of slack for PGD's non-convexity
    assert accs[-1] < accs[0] - 0.3, accs


@pytest.mark.parametrize("attack", ["pgd", "fgsm_rs"])
def test_model_mode_is_eval_during_attack_and_restored(digits_model, batch, attack):
    model = copy.deepcopy(digits_model)
    set_unfrozen_blocks(model, 1)  # frozen stages must come back in eval mode, the rest in train
    modes = []
    model.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    cfg = AttackConfig("linf", 4 / 255, steps=3, method=attack)
    for start in (True, False):
        model.train(start)
        before = {name: m.training for name, m in model.named_modules()}
        cfg(model, *batch)
        assert {name: m.training for name, m in model.named_modules()} == before
    assert modes and not any(modes)


def test_keep_best_loss_at_least_last_iterate(digits_model, batch):
    x, y = batch
    for norm in ("l2", "linf"):
        torch.manual_seed(5)
        last = pgd(digits_model, x, y, norm, EPS[norm], steps=6, step_size=EPS[norm], random_init=True)
        torch.manual_seed(5)
        best = pgd(digits_model, x, y, norm, EPS[norm], steps=6, step_size=EPS[norm], random_init=True,
                   keep_best=True)
        l_last, l_best = losses(digits_model, last, y), losses(digits_model, best, y)
        assert torch.all(l_best >= l_last - 1e-6)
        assert torch.any(l_best > l_last + 1e-4)  # a large step overshoots somewhere: best differs
        no_start = pgd(digits_model, x, y, norm, EPS[norm], steps=3, keep_best=True)
        assert torch.all(losses(digits_model, no_start, y) >= losses(digits_model, x, y) - 1e-6)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fgsm_rs_stays_in_ball(digits_model, batch, norm):
    x, y = batch
    torch.manual_seed(0)
    x_adv = AttackConfig(norm, EPS[norm], steps=1, method="fgsm_rs")(digits_model, x, y)
    d = dist(x_adv - x, norm)
    assert torch.all(d <= EPS[norm] + TOL) and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)
    assert losses(digits_model, x_adv, y).mean() > losses(digits_model, x, y).mean()
    assert AttackConfig(norm, 0.5, method="fgsm_rs").alpha == pytest.approx(1.25 * 0.5)
    assert torch.equal(fgsm_rs(digits_model, x, y, norm, 0.0), x)


def test_batched_attack_equals_one_example_at_a_time(digits_model, batch):
    x, y = batch[0][:6], batch[1][:6]
    for norm in ("l2", "linf"):
        together = pgd(digits_model, x, y, norm, EPS[norm], steps=4)
        alone = torch.cat([pgd(digits_model, x[i:i + 1], y[i:i + 1], norm, EPS[norm], steps=4)
                           for i in range(len(y))])
        torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


def test_zero_gradient_does_not_move_or_nan():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return self.bias.expand(len(x), 3) + 0 * x.flatten(1)[:, :1]

    x = torch.rand(4, 3, 8, 8)
    y = torch.zeros(4, dtype=torch.long)
    out = pgd(Constant(), x, y, "l2", 1.0, steps=3)
    assert torch.isfinite(out).all() and torch.equal(out, x)


def test_projection_is_per_example():
    delta = torch.zeros(3, 1, 2, 2)
    delta[0] = 0.1                      # L2 norm 0.2: inside a ball of 1, untouched
    delta[1] = 3.0                      # norm 6: scaled to 1
    out = project(delta, "l2", 1.0)
    torch.testing.assert_close(out[0], delta[0])
    assert dist(out[1:2], "l2").item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(out[2], delta[2])
    assert project(delta, "linf", 0.5).max() == 0.5


def test_matches_torchattacks_without_random_start(digits_model, batch):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = batch[0][:32], batch[1][:32]
    ours = pgd(digits_model, x, y, "linf", 8 / 255, steps=5, step_size=2 / 255)
    ref = torchattacks.PGD(digits_model, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False)(x, y)
    # the same algorithm; our convolutions run channels-last, so a gradient entry within
    # rounding of 0 could take the other sign: allow a few such pixels, not more
    assert ((ours - ref).abs() <= 1e-6).float().mean() > 0.999
    ours = pgd(digits_model, x, y, "l2", 1.0, steps=5, step_size=0.3)
    ref = torchattacks.PGDL2(digits_model, eps=1.0, alpha=0.3, steps=5, random_start=False)(x, y)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_result_keeps_the_callers_memory_layout(digits_model, batch):
    x, y = batch[0][:4], batch[1][:4]
    assert pgd(digits_model, x, y, "l2", 0.5, steps=2).is_contiguous()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = pgd(digits_model, x_cl, y, "l2", 0.5, steps=2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, pgd(digits_model, x, y, "l2", 0.5, steps=2), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": -0.1}, "eps"), ({"eps": float("nan")}, "eps"), ({"steps": 0}, "steps"),
    ({"steps": -3}, "steps"), ({"steps": 2.5}, "steps"), ({"step_size": -1.0}, "step size"),
    ({"norm": "l1"}, "norm"), ({"method": "cw"}, "attack"),
])
def test_bad_attack_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AttackConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"eps": -0.5}, {"steps": 0}, {"steps": -1}, {"norm": "l1"},
                                    {"step_size": 0.0}])
def test_bad_pgd_arguments(digits_model, batch, kwargs):
    x, y = batch
    with pytest.raises(ConfigError):
        pgd(digits_model, x[:2], y[:2], **kwargs)


def test_fgsm_rs_bad_arguments(digits_model, batch):
    x, y = batch
    with pytest.raises(ConfigError):
        fgsm_rs(digits_model, x[:2], y[:2], "linf", -1.0)


def test_default_step_size_and_to_dict():
    cfg = AttackConfig("l2", 3.0, steps=20)
    assert cfg.alpha == pytest.approx(2.5 * 3.0 / 20)
    assert cfg.to_dict()["step_size"] == pytest.approx(0.375)
