"""Shared fixtures: the digits target and a small ResNet quickly trained on it.

Everything here runs on the CPU in a few seconds. Session-scoped objects are shared, so
tests that train or modify a model take a ``copy.deepcopy`` first.
"""

from __future__ import annotations

import os

import pytest
import torch

from robust_transfer.data import InputPolicy, load_dataset
from robust_transfer.engine.training import FitOptions, OptimConfig, TensorLoader, fit
from robust_transfer.models import build_architecture

DIGITS_SIZE = 16  # digits are 8x8; the small ResNet sees them upsampled to 16x16, 3 channels


def pytest_configure(config):
    # One intra-op thread: these models are tiny, and on a shared 2-core machine two
    # threads competing with other processes ran 8x slower than one (measured).
    torch.set_num_threads(int(os.environ.get("ROBUST_TRANSFER_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def digits_train():
    return load_dataset("digits", "train")


@pytest.fixture(scope="session")
def digits_test():
    return load_dataset("digits", "test")


@pytest.fixture(scope="session")
def digits_net():
    """A seeded, untrained small ResNet for digits at 16 px: real features, no training cost.

    Session-scoped and shared: tests must not modify it.
    """
    torch.manual_seed(0)
    return build_architecture("small_resnet", 10, mean=(0.3,) * 3, std=(0.35,) * 3, input_size=16).eval()


@pytest.fixture(scope="session")
def digits_policy() -> InputPolicy:
    return InputPolicy(3, DIGITS_SIZE)


def train_small_resnet(train, epochs: int = 4, seed: int = 0):
    """A small_resnet fitted on ``train`` (digits) at 16 px; about 95% test accuracy."""
    torch.manual_seed(seed)
    model = build_architecture("small_resnet", train.info.num_classes, mean=(0.3,) * 3,
                         std=(0.35,) * 3, input_size=DIGITS_SIZE)
    policy = InputPolicy(3, DIGITS_SIZE)
    loader = TensorLoader(train.images, train.labels, 64, shuffle=True, transform=policy.prepare,
                          seed=seed)
    options = FitOptions(epochs=epochs, optim=OptimConfig(lr=0.05, schedule="cosine"),
                         seed=seed, device="cpu")
    fit(model, loader, None, options)
    return model.eval()


@pytest.fixture(scope="session")
def digits_model(digits_train):
    """Trained once per session; do not modify (deepcopy first)."""
    return train_small_resnet(digits_train)


@pytest.fixture(scope="session")
def digits_batch(digits_test, digits_policy):
    """200 test images in [0, 1] at 16 px, 3 channels, and their labels."""
    return digits_policy.prepare(digits_test.images[:200]), digits_test.labels[:200]
