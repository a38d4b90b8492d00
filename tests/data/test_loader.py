"""TensorLoader placement: the same batches whether the data sit on the device or are streamed."""

from __future__ import annotations

import pytest
import torch

from robust_transfer.data.loader import DeviceBudget, TensorLoader, device_budget, nbytes
from robust_transfer.data.transforms import InputPolicy
from robust_transfer.errors import ConfigError


def _batches(loader: TensorLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_streamed_batches_equal_device_batches_and_the_budget_decides(digits_train):
    images, labels = digits_train.images[:100], digits_train.labels[:100]
    policy = InputPolicy(3, 16, augment=True)
    budget = DeviceBudget(nbytes(images) + nbytes(labels))  # room for one copy exactly
    runs = []
    for _ in range(2):  # the first loader takes the budget, the second is streamed
        loader = TensorLoader(images, labels, 32, shuffle=True, transform=policy.train_batch,
                              seed=4, device="cpu", budget=budget, name="train images")
        loader.set_epoch(2)
        torch.manual_seed(7)  # the augmentation's generator, as fit seeds it
        runs.append((loader.placement, _batches(loader)))
    (p0, first), (p1, second) = runs
    assert (p0, p1) == ("device", "stream") and budget.streamed == ["train images"]
    assert len(first) == len(second) == 4
    for (x0, y0), (x1, y1) in zip(first, second, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_device_loader_on_the_cpu_yields_what_the_plain_loader_did(digits_train):
    images, labels = digits_train.images[:50], digits_train.labels[:50]
    plain = TensorLoader(images, labels, 16, shuffle=True, seed=1)
    placed = TensorLoader(images, labels, 16, shuffle=True, seed=1, device="cpu",
                          budget=DeviceBudget(10**9))
    assert placed.data.data_ptr() == images.data_ptr()  # the CPU path copies nothing
    for (a, ya), (b, yb) in zip(plain, placed, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_device_budget_on_the_cpu_is_unlimited_and_shares_are_checked():
    assert device_budget("cpu").total is None
    assert device_budget("cpu", total=123).total == 123
    for bad in (0, 1.5, -0.25):
        with pytest.raises(ConfigError, match="share"):
            device_budget("cpu", share=bad)
    with pytest.raises(ConfigError, match="positive"):
        device_budget("cpu", total=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_resident_and_streamed_batches_agree(digits_train):
    images, labels = digits_train.images[:100], digits_train.labels[:100]
    policy = InputPolicy(3, 32, augment=True)
    out = {}
    for name, total in (("device", 10**9), ("stream", 1)):
        loader = TensorLoader(images, labels, 32, shuffle=True, transform=policy.train_batch,
                              device="cuda", budget=DeviceBudget(total))
        assert loader.placement == name
        torch.manual_seed(0)
        out[name] = [(x.cpu(), y.cpu()) for x, y in loader]
        assert all(x.is_cuda for x, _ in loader)
    for (a, ya), (b, yb) in zip(out["device"], out["stream"], strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)
