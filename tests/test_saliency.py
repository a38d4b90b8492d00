"""Input-gradient saliency: equals finite differences, SmoothGrad reduces to it, mode restored."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from robust_transfer.errors import ConfigError
from robust_transfer.models import build_architecture
from robust_transfer.saliency import (
    SaliencyConfig,
    attribute,
    explain_saliency,
    input_gradients,
    saliency_image,
)


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


# --- through captum --------------------------------------------------------------------
def test_captum_saliency_equals_our_input_gradients(digits_model, digits_batch):
    """Today's maps are kept: captum's Saliency (signed) is the input gradient, to rounding."""
    x, y = digits_batch[0][:24], digits_batch[1][:24]
    ours = input_gradients(digits_model, x, y)
    theirs = attribute(digits_model, x, y, SaliencyConfig("saliency", batch_size=10))
    scale = ours.abs().max()
    assert scale > 0 and (theirs - ours).abs().max() <= 1e-6 * scale
    tiny, xt = tiny_model(), torch.rand(3, 1, 6, 6, dtype=torch.float64)
    assert torch.equal(attribute(tiny, xt, torch.tensor([0, 1, 2])),
                       input_gradients(tiny, xt, torch.tensor([0, 1, 2])))


def test_captum_smoothgrad_is_seeded_and_reduces_to_the_gradient():
    model = tiny_model()
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2])
    plain = input_gradients(model, x, y)
    flat = attribute(model, x, y, SaliencyConfig("smoothgrad", samples=4, sigma=0.0))
    assert torch.allclose(flat, plain, rtol=1e-12, atol=1e-15)
    cfg = SaliencyConfig("smoothgrad", samples=6, sigma=0.2, batch_size=4)
    state = torch.random.get_rng_state()
    a, b = attribute(model, x, y, cfg, seed=5), attribute(model, x, y, cfg, seed=5)
    assert torch.equal(a, b) and not torch.allclose(a, plain)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's stream is untouched
    # the same estimator as our own SmoothGrad: both near the many-sample mean
    ref = input_gradients(model, x, y, samples=200, sigma=0.2, generator=torch.Generator().manual_seed(1))
    big = attribute(model, x, y, SaliencyConfig("smoothgrad", samples=200, sigma=0.2, batch_size=256))
    assert (big - ref).norm() < 0.15 * ref.norm()


def test_integrated_gradients_are_complete_and_check_the_baseline():
    model = tiny_model()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 2])
    loss = torch.nn.functional.cross_entropy
    for baseline in (None, 0.5, np.full((1, 6, 6), 0.25)):
        ig = attribute(model, x, y, SaliencyConfig("integrated-gradients", steps=512,
                                                   baseline=baseline))
        b = torch.full_like(x, 0.0 if baseline is None else float(np.asarray(baseline).flat[0]))
        model.eval()
        with torch.no_grad():
            gap = loss(model(x), y, reduction="none") - loss(model(b), y, reduction="none")
        # completeness: attributions sum to the loss difference from the baseline (up to
        # the quadrature of a path through ReLU kinks)
        assert ig.sum(dim=(1, 2, 3)) == pytest.approx(gap.numpy(), rel=1e-2, abs=1e-3)
    with pytest.raises(ConfigError, match=r"baseline has shape \[3, 6, 6\] but the model input is"):
        attribute(model, x, y, SaliencyConfig("integrated-gradients", baseline=np.zeros((3, 6, 6))))
    with pytest.raises(ConfigError, match="takes no baseline"):
        SaliencyConfig("saliency", baseline=0.5)
    with pytest.raises(ConfigError, match=r"must lie in \[0, 1\]"):
        SaliencyConfig("integrated-gradients", baseline=2.0)


def test_explain_saliency_records_the_method_and_refuses_a_bad_baseline_before_writing(
        tmp_path, digits_net, digits_test):
    out = tmp_path / "ig"
    cfg = SaliencyConfig("integrated-gradients", steps=8)
    summary = explain_saliency({"natural": digits_net}, digits_test, np.array([1, 2]), out, config=cfg)
    assert summary["method"] == "integrated-gradients" and summary["baseline"] == 0.0
    assert np.load(out / "gradients.npz")["natural"].shape == (2, 3, 16, 16)
    bad = SaliencyConfig("integrated-gradients", baseline=np.zeros((1, 16, 16)))
    with pytest.raises(ConfigError, match="baseline has shape"):
        explain_saliency({"natural": digits_net}, digits_test, np.array([1]), tmp_path / "no", config=bad)
    assert not (tmp_path / "no").exists()


def test_the_cli_restates_the_methods_and_defaults_of_the_library():
    from robust_transfer.cli import saliency as cli
    from robust_transfer.saliency import METHODS, SaliencyConfig

    assert sorted(cli.METHOD_NAMES) == sorted(METHODS.names())
    assert (cli.DEFAULT_SAMPLES, cli.DEFAULT_STEPS) == (SaliencyConfig.samples, SaliencyConfig.steps)
    assert cli.DEFAULT_SIGMA == SaliencyConfig.sigma
