"""Last-layer influence: closed form equals autograd, fast equals slow, errors are clear."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from robust_transfer.errors import ConfigError, OutputExistsError
from robust_transfer.influence import (
    InfluenceConfig,
    InfluenceMemoryError,
    SingularHessianError,
    class_match_curve,
    compute_influence,
    explain_influence,
    hessian_vector_product,
    influence_for_model,
    last_layer_hessian,
    per_example_grads,
    rank_training,
    sum_zero_basis,
    top_k,
    torch_order_permutation,
    wilson_interval,
)
from robust_transfer.influence.hessian import augment, from_sum_zero, head_probs, to_sum_zero
from robust_transfer.influence.solvers import ConvergenceError

F64 = torch.float64


def make_problem(n=40, m=7, d=5, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    xt = torch.randn(m, d, generator=g, dtype=F64)
    w = 0.5 * torch.randn(c, d, generator=g, dtype=F64)
    b = 0.1 * torch.randn(c, generator=g, dtype=F64)
    y = torch.randint(0, c, (n,), generator=g)
    yt = torch.randint(0, c, (m,), generator=g)
    return x, y, xt, yt, w, b


def autograd_hessian(x, y, w, b):
    """Hessian of the mean loss in PyTorch's parameter order, permuted to class-major."""
    c, d = w.shape

    def loss(theta):
        return torch.nn.functional.cross_entropy(x @ theta[:c * d].reshape(c, d).T + theta[c * d:], y)

    h = torch.autograd.functional.hessian(loss, torch.cat([w.flatten(), b]))
    perm = torch_order_permutation(c, d)
    return h[perm][:, perm]


def slow_grads(x, y, w, b):
    """One autograd call per example through an nn.Linear, permuted to class-major."""
    c, d = w.shape
    lin = torch.nn.Linear(d, c).double()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    rows = []
    for i in range(len(x)):
        loss = torch.nn.functional.cross_entropy(lin(x[i:i + 1]), y[i:i + 1])
        gw, gb = torch.autograd.grad(loss, [lin.weight, lin.bias])
        rows.append(torch.cat([gw.flatten(), gb]))
    return torch.stack(rows)[:, torch_order_permutation(c, d)]


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_hessian_equals_autograd():
    x, y, _, _, w, b = make_problem()
    h_ref = autograd_hessian(x, y, w, b)
    assert rel(last_layer_hessian(x, w, b), h_ref) < 1e-8
    m = torch.kron(sum_zero_basis(4), torch.eye(6, dtype=F64))
    assert rel(last_layer_hessian(x, w, b, reduced=True), m.T @ h_ref @ m) < 1e-8


def test_sum_zero_basis_is_orthonormal_and_sums_to_zero():
    q = sum_zero_basis(7)
    assert torch.allclose(q.T @ q, torch.eye(6, dtype=F64), atol=1e-14)
    assert torch.allclose(q.sum(0), torch.zeros(6, dtype=F64), atol=1e-14)


@pytest.mark.parametrize("c", [2, 3, 11])
def test_linear_time_sum_zero_transforms_equal_the_basis(c):
    q = sum_zero_basis(c)
    r, u = torch.randn(4, 3, c, dtype=F64), torch.randn(4, 3, c - 1, dtype=F64)
    assert torch.allclose(to_sum_zero(r), r @ q, atol=1e-14)
    assert torch.allclose(from_sum_zero(u), u @ q.T, atol=1e-14)


def test_per_example_grads_match_autograd_in_torch_order():
    x, y, _, _, w, b = make_problem()
    assert torch.allclose(per_example_grads(x, y, w, b), slow_grads(x, y, w, b), atol=1e-13)
    perm = torch_order_permutation(4, 5)
    theta_torch = torch.cat([w.flatten(), b])
    assert torch.equal(theta_torch[perm].reshape(4, 6), torch.cat([w, b[:, None]], 1))


@pytest.mark.parametrize("reduced", [False, True])
def test_hessian_vector_product_matches_hessian(reduced):
    x, _, _, _, w, b = make_problem()
    h = last_layer_hessian(x, w, b, reduced=reduced)
    v = torch.randn(3, h.shape[0], dtype=F64, generator=torch.Generator().manual_seed(1))
    hv = hessian_vector_product(augment(x), head_probs(x, w, b), v, reduced=reduced)
    assert torch.allclose(hv, v @ h, atol=1e-13)


def reference_scores(x, y, xt, yt, w, b, damping):
    """Slow and obvious: autograd Hessian, per-example autograd gradients, explicit inverse."""
    h = autograd_hessian(x, y, w, b)
    inv = torch.linalg.inv(h + damping * torch.eye(len(h), dtype=F64))
    g, gt = slow_grads(x, y, w, b), slow_grads(xt, yt, w, b)
    return (-(gt @ inv @ g.T)).numpy(), (-(g @ inv @ g.T)).numpy()


@pytest.mark.parametrize("solver", ["cholesky", "eigh", "cg"])
def test_scores_equal_slow_reference(solver):
    x, y, xt, yt, w, b = make_problem()
    ref, ref_train = reference_scores(x, y, xt, yt, w, b, 1e-2)
    out = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(damping=1e-2, solver=solver))
    tol = 1e-10 if solver != "cg" else 1e-7
    scale = np.abs(ref).max()
    assert np.abs(out.scores - ref).max() < tol * scale
    assert np.abs(out.train_scores - ref_train).max() < tol * scale
    assert np.allclose(out.self_influence, np.diag(ref_train), atol=tol * scale)
    assert (out.self_influence <= 0).all()  # an image always helps itself
    assert out.config.damping == 1e-2


def test_test_targets_only_and_cg_batches_give_the_same_scores():
    x, y, xt, yt, w, b = make_problem(n=60, m=9, d=6, c=12)  # a wider head
    ref = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(damping=1e-2))
    only = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(damping=1e-2, train_targets=False))
    assert only.train_scores is None and only.self_influence is None
    assert np.allclose(only.scores, ref.scores, rtol=1e-10, atol=1e-12)
    cg = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(damping=1e-2, solver="cg", cg_batch=4))
    scale = np.abs(ref.scores).max()
    assert np.abs(cg.scores - ref.scores).max() < 1e-7 * scale
    assert np.abs(cg.self_influence - ref.self_influence).max() < 1e-7 * scale
    assert cg.info["cg_max_relative_residual"] <= 1e-10


def test_cg_that_does_not_converge_says_so():
    x, y, xt, yt, w, b = make_problem()
    with pytest.raises(ConvergenceError, match="after 2 iterations.*cg-max-iter"):
        compute_influence(x, y, xt, yt, w, b, InfluenceConfig(solver="cg", cg_max_iter=2))


def test_pinv_reproduces_the_papers_truncation():
    x, y, xt, yt, w, b = make_problem(n=30, d=8)
    x = x * torch.logspace(0, -2, 8, dtype=F64)  # a spread of curvatures, some below 5e-2
    h = autograd_hessian(x, y, w, b).numpy()
    g, gt = slow_grads(x, y, w, b).numpy(), slow_grads(xt, yt, w, b).numpy()
    ref = -(gt @ np.linalg.pinv(h, rcond=5e-2, hermitian=True) @ g.T)
    out = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(damping=0.0, solver="pinv"))
    assert np.abs(out.scores - ref).max() < 1e-9 * np.abs(ref).max()
    assert out.info["kept_eigenvalues"] < out.info["dimension"]  # 5e-2 truncates


def test_zero_damping_on_full_rank_features_equals_pseudo_inverse():
    # the shift null space is projected out, so zero damping works when features span R^(d+1)
    x, y, xt, yt, w, b = make_problem()
    h = autograd_hessian(x, y, w, b)
    g, gt = slow_grads(x, y, w, b), slow_grads(xt, yt, w, b)
    ref = (-(gt @ torch.linalg.pinv(h, hermitian=True, rtol=1e-10) @ g.T)).numpy()
    out = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(damping=0.0))
    assert np.abs(out.scores - ref).max() < 1e-8 * np.abs(ref).max()


def test_zero_damping_with_singular_hessian_explains():
    x, y, xt, yt, w, b = make_problem()
    x = torch.cat([x[:, :3], x[:, :2].sum(1, keepdim=True)], 1)  # rank 3 of d = 4
    with pytest.raises(SingularHessianError, match=r"d\+1 = 5.*span only 4 of the 5.*damping"):
        compute_influence(x, y, xt[:, :4], yt, w[:, :4], b, InfluenceConfig(damping=0.0))
    # damping fixes it
    compute_influence(x, y, xt[:, :4], yt, w[:, :4], b, InfluenceConfig(damping=1e-3))


def test_memory_estimate_refuses_and_suggests_cg():
    x, y, xt, yt, w, b = make_problem()
    with pytest.raises(InfluenceMemoryError, match=r"needs about .* solver 'cg'"):
        compute_influence(x, y, xt, yt, w, b, InfluenceConfig(memory_limit=1000))


@pytest.mark.parametrize("bad", [dict(damping=-1.0), dict(solver="magic"), dict(rcond=0.0)])
def test_bad_config_raises(bad):
    with pytest.raises(ConfigError):
        InfluenceConfig(**bad)


def test_labels_outside_the_head_raise():
    x, y, xt, yt, w, b = make_problem()
    with pytest.raises(ConfigError, match="labels must lie in 0..3"):
        compute_influence(x, y + 4, xt, yt, w, b)


def test_rank_training_orders_and_excludes_self():
    scores = np.array([[-3.0, 1.0, -1.0, 2.0], [0.5, -2.0, 4.0, -0.1]])
    assert rank_training(scores, 2).tolist() == [[0, 2], [1, 3]]
    assert rank_training(scores, 2, "harmful").tolist() == [[3, 1], [2, 0]]
    assert rank_training(scores, 2, "abs").tolist() == [[0, 3], [2, 1]]
    square = np.array([[-9.0, -1.0, 0.0], [-2.0, -9.0, -3.0], [0.0, 1.0, -9.0]])
    assert rank_training(square, 2, exclude_self=True).tolist() == [[1, 2], [2, 0], [0, 1]]
    top = top_k(scores, 1)
    assert top.helpful_scores.ravel().tolist() == [-3.0, -2.0]


def test_rank_training_in_chunks_equals_one_argsort():
    scores = np.round(np.random.default_rng(0).normal(size=(600, 600)), 1)  # with ties
    key = scores.copy()
    np.fill_diagonal(key, np.inf)
    expected = np.argsort(key, axis=1, kind="stable")[:, :7]
    assert np.array_equal(rank_training(scores, 7, exclude_self=True), expected)


def test_class_match_curve_counts_and_interval():
    scores = np.array([[-2.0, -1.0, 0.0], [0.0, -1.0, -2.0]])
    curve = class_match_curve(scores, np.array([0, 0]), np.array([0, 1, 0]), max_rank=5)
    assert curve.ranks.tolist() == [1, 2, 3]  # clipped to the candidates
    assert curve.share.tolist() == [1.0, 0.0, 1.0]
    assert curve.chance == pytest.approx(2 / 3)
    low, high = wilson_interval(np.array([0, 10, 5]), 10)
    assert low[0] == 0 and high[1] == pytest.approx(1.0)
    assert low[2] == pytest.approx(0.2366, abs=1e-4) and high[2] == pytest.approx(0.7634, abs=1e-4)


def test_influence_for_model_uses_frozen_features_and_head(digits_net, digits_train,
                                                           digits_test, digits_policy):
    model = copy.deepcopy(digits_net).train()
    train, test = digits_train.subset(np.arange(120)), digits_test.subset(np.arange(15))
    out = influence_for_model(model, train, test, digits_policy, InfluenceConfig(damping=1e-3))
    assert model.training and model.net.fc.training  # mode restored
    with torch.no_grad():
        model.eval()
        f = model.features(digits_policy.prepare(train.images)).double()
        ft = model.features(digits_policy.prepare(test.images)).double()
    ref = compute_influence(f, train.labels, ft, test.labels, model.head.weight, model.head.bias)
    assert np.allclose(out.scores, ref.scores, rtol=1e-6, atol=1e-8 * np.abs(ref.scores).max())
    assert out.scores.shape == (15, 120) and "features_s" in out.timings


def test_class_mismatch_raises(digits_net, digits_train, digits_policy):
    model = copy.deepcopy(digits_net)
    model.reset_classifier(3)
    with pytest.raises(ConfigError, match="head has 3 classes but dataset 'digits' has 10"):
        influence_for_model(model, digits_train, digits_train, digits_policy)


def test_explain_influence_writes_arrays_figures_summary(tmp_path, digits_net, digits_train,
                                                         digits_test):
    train, test = digits_train.subset(np.arange(100)), digits_test.subset(np.arange(20))
    models = {"robust": digits_net, "natural": digits_net}
    out = tmp_path / "influence"
    summary = explain_influence(models, train, test, out, InfluenceConfig(damping=1e-3),
                                top=5, max_rank=50, grid_size=(3, 4))
    assert {p.name for p in out.iterdir()} == {"summary.json", "class_match.png",
                                              "influence_grid.png", "robust", "natural"}
    saved = json.loads((out / "summary.json").read_text())
    assert saved["models"]["robust"]["damping"] == 1e-3 == summary["config"]["damping"]
    assert 0 <= saved["models"]["natural"]["top1_class_match_train"]["share"] <= 1
    arrays = np.load(out / "robust" / "influence.npz")
    assert arrays["scores"].shape == (20, 100) and arrays["top_helpful"].shape == (20, 5)
    assert arrays["class_match_test_share"].shape == (50,)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        explain_influence(models, train, test, out)
