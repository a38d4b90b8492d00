"""Batched augmentation: each op equals torchvision's functional op, the parameters follow the
paper's distributions, and the number of tensor operations per batch does not grow with it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms.v2 import functional as TF

from robust_transfer.data import augment as A
from robust_transfer.data import load_dataset
from robust_transfer.data.transforms import InputPolicy
from robust_transfer.errors import ConfigError

JITTER_TOL = 1e-6  # float32 rounding of f*x + (1-f)*t in a different association
_ADJUST = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Real images (digits at 24 px), tinted per channel so that colour ops have work to do."""
    digits = load_dataset("digits", "train").images[:12]
    x = InputPolicy(3, 24).prepare(digits)
    tint = torch.linspace(0.4, 1.0, 3).view(1, 3, 1, 1)  # make the channels differ
    return (x * tint + torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 0.2).clamp(0, 1)


@pytest.fixture(scope="module")
def params(images) -> A.AugmentParams:
    return A.draw_params(len(images), torch.Generator().manual_seed(3))


def _reference(img: torch.Tensor, p: A.AugmentParams, i: int) -> torch.Tensor:
    """One image through torchvision's functional ops with image i's parameters."""
    h, w = img.shape[-2:]
    out = TF.crop(TF.pad(img, [4, 4, 4, 4]), int(p.dy[i]), int(p.dx[i]), h, w)
    if p.flip[i]:
        out = TF.horizontal_flip(out)
    for op in p.order[i].tolist():
        out = _ADJUST[op](out, float(p.factors[i, op]))
    return TF.rotate(out, float(p.angle[i]))


def test_crop_equals_torchvision_crop_of_the_padded_image(images, params):
    ours = A.crop(images, params.dy, params.dx, 4)
    for i, img in enumerate(images):
        ref = TF.crop(TF.pad(img, [4, 4, 4, 4]), int(params.dy[i]), int(params.dx[i]), 24, 24)
        assert torch.equal(ours[i], ref)


def test_flip_equals_torchvision_horizontal_flip(images, params):
    ours = A.flip(images, params.flip)
    fused = A.crop(images, params.dy, params.dx, 4, mirror=params.flip)
    assert params.flip.any() and not params.flip.all()
    for i, img in enumerate(images):
        assert torch.equal(ours[i], TF.horizontal_flip(img) if params.flip[i] else img)
    assert torch.equal(fused, A.flip(A.crop(images, params.dy, params.dx, 4), params.flip))


@pytest.mark.parametrize("op", [0, 1, 2])
def test_each_colour_op_equals_torchvision(images, op):
    factors = torch.linspace(0.75, 1.25, len(images)).view(-1, 1).expand(-1, 3).contiguous()
    order = torch.tensor([[op] + [o for o in range(3) if o != op]]).expand(len(images), 3)
    # the other two ops get factor 1: they are the identity, so this is ``op`` alone
    single = torch.where(torch.arange(3) == op, factors, torch.ones_like(factors))
    ours = A.jitter(images, single, order)
    for i, img in enumerate(images):
        ref = _ADJUST[op](img, float(factors[i, op]))
        assert (ours[i] - ref).abs().max() <= JITTER_TOL


def test_jitter_in_each_images_order_equals_torchvision(images, params):
    ours = A.jitter(images, params.factors, params.order)
    for i, img in enumerate(images):
        ref = img
        for op in params.order[i].tolist():
            ref = _ADJUST[op](ref, float(params.factors[i, op]))
        assert (ours[i] - ref).abs().max() <= JITTER_TOL


def test_rotation_equals_torchvision_rotate_nearest_fill_zero(images):
    angles = torch.tensor([-2.0, -1.3, -0.4, 0.0, 0.7, 2.0, 1.99, -0.01, 0.5, 1.0, -1.0, 1.5],
                          dtype=torch.float64)
    ours = A.rotate(images, angles)
    rect = torch.rand(2, 3, 20, 31, generator=torch.Generator().manual_seed(1))  # non-square
    ours_rect = A.rotate(rect, angles[:2])
    for i, img in enumerate(images):
        assert torch.equal(ours[i], TF.rotate(img, float(angles[i])))
    for i in range(2):
        assert torch.equal(ours_rect[i], TF.rotate(rect[i], float(angles[i])))
    big = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(A.rotate(big, angles[:1]), big)  # 2 degrees moves corner pixels at 64 px


def test_whole_pipeline_equals_torchvision_per_image(images, params):
    ours = A.apply_augment(images, params)
    for i, img in enumerate(images):
        assert (ours[i] - _reference(img, params, i)).abs().max() <= JITTER_TOL


def test_grayscale_images_follow_torchvision_too(params):
    gray = load_dataset("digits", "test").images[:12].float().div(16).clamp(0, 1)
    ours = A.apply_augment(gray, params)
    for i, img in enumerate(gray):
        assert (ours[i] - _reference(img, params, i)).abs().max() <= JITTER_TOL


# --- distributions (seeded: deterministic, so these cannot flake) --------------------------
N = 60_000


@pytest.fixture(scope="module")
def many() -> A.AugmentParams:
    return A.draw_params(N, torch.Generator().manual_seed(2026))


def _uniform_counts_p(values: np.ndarray, k: int) -> float:
    return stats.chisquare(np.bincount(values, minlength=k)).pvalue


def test_offsets_are_uniform_on_0_to_8(many):
    for off in (many.dy, many.dx):
        v = off.numpy()
        assert v.min() == 0 and v.max() == 8
        assert _uniform_counts_p(v, 9) > 1e-3
    assert abs(np.corrcoef(many.dy.numpy(), many.dx.numpy())[0, 1]) < 0.02  # independent


def test_flip_rate_is_one_half(many):
    assert stats.binomtest(int(many.flip.sum()), N, 0.5).pvalue > 1e-3


def test_factors_are_uniform_on_075_125(many):
    f = many.factors.numpy()
    assert f.min() >= 0.75 and f.max() <= 1.25
    for j in range(3):
        assert stats.kstest(f[:, j], stats.uniform(0.75, 0.5).cdf).pvalue > 1e-3


def test_order_is_uniform_over_the_six_permutations(many):
    perms = {p: i for i, p in enumerate(itertools.permutations(range(3)))}
    codes = np.array([perms[tuple(row)] for row in many.order.tolist()])
    assert _uniform_counts_p(codes, 6) > 1e-3


def test_angle_is_uniform_on_minus2_2(many):
    a = many.angle.numpy()
    assert a.min() >= -2 and a.max() <= 2
    assert stats.kstest(a, stats.uniform(-2, 4).cdf).pvalue > 1e-3


def test_the_statistical_checks_reject_a_wrong_distribution(many):
    """The tests above have power: offsets on 0..7 or a flip rate of 0.52 are caught."""
    assert _uniform_counts_p(many.dy.numpy() % 8, 9) < 1e-6
    assert stats.binomtest(int(N * 0.52), N, 0.5).pvalue < 1e-6
    assert stats.kstest(many.angle.numpy() * 0.9, stats.uniform(-2, 4).cdf).pvalue < 1e-6


def test_same_generator_same_batch_and_device_independent_draws(images):
    a = A.augment_batch(images, torch.Generator().manual_seed(5))
    b = A.augment_batch(images, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, A.augment_batch(images, torch.Generator().manual_seed(6)))


def test_op_count_per_batch_does_not_grow_with_the_batch():
    from torch.profiler import ProfilerActivity, profile

    def count(batch: int) -> int:
        x = torch.rand(batch, 3, 32, 32)
        A.augment_batch(x, torch.Generator().manual_seed(0))  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            A.augment_batch(x, torch.Generator().manual_seed(0))
        return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)

    small, large = count(16), count(256)
    assert small == large and 0 < small < 200


def test_augment_config_refuses_values_out_of_range():
    for bad in ({"padding": -1}, {"flip": 1.5}, {"jitter": 1.0}, {"degrees": -2}):
        with pytest.raises(ConfigError):
            A.AugmentConfig(**bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_equals_cpu_batch(images, params):
    cpu = A.apply_augment(images, params)
    gpu = A.apply_augment(images.cuda(), params).cpu()
    assert (cpu - gpu).abs().max() <= 1e-5
