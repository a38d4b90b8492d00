"""Input-gradient saliency: equals finite differences, SmoothGrad reduces to it, mode restored."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from robust_transfer.errors import ConfigError
from robust_transfer.models import build_architecture
from robust_transfer.saliency import explain_saliency, input_gradients, saliency_image


def tiny_model(dtype=torch.float64):
    torch.manual_seed(0)
    model = build_architecture("small_resnet", 3, mean=(0.5,), std=(0.25,), input_size=6)
    model.net.conv1 = torch.nn.Conv2d(1, 16, 3, 1, 1, bias=False)  # one input channel
    model.channels = 1
    return model.to(dtype)


def test_gradient_equals_finite_differences():
    model = tiny_model()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2])
    grad = input_gradients(model, x, y)
    model.eval()
    eps = 1e-6
    for i, pos in [(0, (0, 1, 2)), (1, (0, 4, 5)), (0, (0, 3, 3))]:
        plus, minus = x[i:i + 1].clone(), x[i:i + 1].clone()
        plus[(0, *pos)] += eps
        minus[(0, *pos)] -= eps
        loss = torch.nn.functional.cross_entropy
        with torch.no_grad():
            fd = (loss(model(plus), y[i:i + 1]) - loss(model(minus), y[i:i + 1])) / (2 * eps)
        assert float(grad[(i, *pos)]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_each_gradient_is_its_own_loss_independent_of_batching():
    model = tiny_model()
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0, 1])
    assert torch.allclose(input_gradients(model, x, y, batch_size=5),
                          input_gradients(model, x, y, batch_size=2), atol=1e-14)


def test_smoothgrad_with_sigma_zero_equals_plain_gradient():
    model = tiny_model()
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2])
    plain = input_gradients(model, x, y)
    smooth = input_gradients(model, x, y, samples=5, sigma=0.0, batch_size=4)
    assert torch.allclose(smooth, plain, rtol=1e-12, atol=1e-15)
    noisy = input_gradients(model, x, y, samples=5, sigma=0.2,
                            generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(noisy, plain)


def test_model_mode_and_parameter_grads_restored():
    model = tiny_model()
    model.frozen_depth = 2
    model.train()
    flags = [m.training for m in model.modules()]
    assert not all(flags) and any(flags)  # frozen stages are in eval mode
    input_gradients(model, torch.rand(2, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1]))
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_bad_input_raises():
    model = tiny_model()
    with pytest.raises(ConfigError):
        input_gradients(model, torch.rand(2, 1, 6, 6, dtype=torch.float64), torch.tensor([0]))
    with pytest.raises(ConfigError):
        input_gradients(model, torch.zeros(1, 1, 6, 6, dtype=torch.uint8), torch.tensor([0]))


def test_saliency_image_is_in_unit_range():
    img = saliency_image(torch.randn(2, 3, 4, 4) * 1e-5)
    assert img.min() >= 0 and img.max() <= 1 and img.shape == (2, 3, 4, 4)


def test_explain_saliency_writes_figure_and_arrays(tmp_path, digits_net, digits_test):
    models = {"natural": digits_net, "robust": copy.deepcopy(digits_net)}
    out = tmp_path / "sal"
    summary = explain_saliency(models, digits_test, np.array([0, 5, 9]), out, samples=2, sigma=0.1)
    assert {p.name for p in out.iterdir()} == {"saliency.png", "gradients.npz", "summary.json"}
    grads = np.load(out / "gradients.npz")
    assert grads["natural"].shape == (3, 3, 16, 16)
    assert np.allclose(grads["natural"], grads["robust"])  # same model, same seeded noise
    assert json.loads((out / "summary.json").read_text())["smoothgrad_samples"] == 2
    assert summary["n_images"] == 3
