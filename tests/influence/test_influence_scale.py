"""Influence at scale (issue 19): streamed rankings, K-FAC / EK-FAC, auto's choice under budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust_transfer.errors import ConfigError
from robust_transfer.influence import InfluenceConfig, InfluenceMemoryError, compute_influence
from robust_transfer.influence.analysis import class_match_curve, top_k
from robust_transfer.influence.core import _gradient_problem, plan_for
from robust_transfer.influence.kfac import kfac_scores_reference, run_kronecker
from robust_transfer.influence.streaming import StreamedRanking

F64 = torch.float64
FIELDS = ("helpful", "helpful_scores", "harmful", "harmful_scores", "test_ranks", "train_ranks",
          "self_influence")


def clustered(n, m, d, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(c, d, generator=g, dtype=F64)
    y, yt = torch.arange(n) % c, torch.arange(m) % c
    x = centres[y] + torch.randn(n, d, generator=g, dtype=F64)
    xt = centres[yt] + torch.randn(m, d, generator=g, dtype=F64)
    w = 0.3 * (centres - centres.mean(0))
    return x, y, xt, yt, w, torch.zeros(c, dtype=F64)


@pytest.mark.parametrize("corrected", [False, True])
def test_kronecker_forms_equal_their_dense_inverse(corrected):
    x, y, xt, yt, w, b = clustered(80, 30, 7)
    problem = _gradient_problem(x, y, xt, yt, w, b, True)
    scores, train = run_kronecker(problem, 1e-2, corrected)["held"]
    ref = kfac_scores_reference(problem, 1e-2, corrected)
    assert (scores - ref).abs().max() <= 1e-5 * ref.abs().max()  # float32 score products
    assert train.shape == (80, 80)
    assert torch.allclose(train, train.T, rtol=0, atol=1e-5 * float(train.abs().max()))


def test_ekfac_is_exact_where_the_hessian_is_a_kronecker_product():
    # a zero head predicts the same probabilities for every image, so H = S (x) A exactly:
    # EK-FAC's refitted eigenvalues are H's own, K-FAC is off by its split damping only
    x, y, xt, yt, w, b = clustered(120, 20, 5)
    w.zero_()
    cfg = dict(damping=1e-2, train_targets=False)
    exact = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(form="direct", **cfg))
    err = lambda form: np.abs(compute_influence(  # noqa: E731
        x, y, xt, yt, w, b, InfluenceConfig(form=form, **cfg)).scores - exact.scores).max() / np.abs(
        exact.scores).max()
    assert err("ekfac") < 1e-5 < err("kfac") < 0.5


@pytest.mark.parametrize("cfg", [
    dict(form="direct"),  # m <= n: whitened gradients
    dict(form="direct", train_targets=False),  # solves, test side
    dict(form="kernel"), dict(form="block"), dict(form="kfac"), dict(form="ekfac"),
    dict(solver="cg", cg_tol=1e-8), dict(solver="eigh"),
])
def test_streamed_rankings_equal_the_full_matrices_bit_for_bit(cfg):
    n = 120 if cfg.get("solver") == "cg" else 300
    x, y, xt, yt, w, b = clustered(n, 270, 6)  # two 256-row blocks of test rows
    full = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(scores="full", **cfg))
    stream = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(scores="stream", top_k=7,
                                                                    max_rank=40, **cfg))
    assert stream.scores is None and stream.train_scores is None and full.scores is not None
    a, b_ = stream.rank(7, 40), full.rank(7, 40)
    for name in FIELDS:
        got, want = getattr(a, name), getattr(b_, name)
        assert (got is None) == (want is None) and (got is None or np.array_equal(got, want)), name
    # and the full ranking is what the analysis functions give on the matrices
    top = top_k(full.scores, 7)
    assert np.array_equal(b_.helpful, top.helpful) and np.array_equal(b_.harmful_scores, top.harmful_scores)
    curve = class_match_curve(full.scores, full.test_labels, full.train_labels, 40)
    assert np.array_equal(b_.test_ranks, np.argsort(full.scores, 1, kind="stable")[:, :40])
    from robust_transfer.influence.outputs import curves_for

    assert np.array_equal(curves_for(stream, 40)[0].share, curve.share)
    with pytest.raises(ConfigError, match="kept the top 7"):
        stream.rank(8, 40)


def test_streaming_never_holds_the_score_matrix():
    x, y, xt, yt, w, b = clustered(400, 600, 5)
    problem = _gradient_problem(x, y, xt, yt, w, b, True)
    sink = StreamedRanking(600, 400, 10, 100, True)
    seen = []
    test, train = sink.test, sink.train
    sink.test = lambda s, rows: (seen.append(("test", rows.shape)), test(s, rows))  # type: ignore[method-assign]
    sink.train = lambda s, rows: (seen.append(("train", rows.shape)), train(s, rows))  # type: ignore[method-assign]
    problem.sink = sink
    assert run_kronecker(problem, 1e-3, False)["held"] == (None, None)
    assert max(shape[0] for _, shape in seen) <= 256
    assert sum(shape[0] for kind, shape in seen if kind == "test") == 600


def test_auto_keeps_the_paper_setting_exact_and_scales_with_kfac():
    paper = plan_for(InfluenceConfig(memory_limit=8 * 2**30), 3200, 10_000, 10, 2048)
    assert (paper.form, paper.scores, paper.exact) == ("block", "full", True)
    for classes in (10, 100):  # CIFAR-10 and CIFAR-100 shaped
        plan = plan_for(InfluenceConfig(memory_limit=8 * 2**30), 50_000, 10_000, classes, 2048)
        assert (plan.form, plan.scores, plan.exact) == ("kfac", "stream", False)
        assert plan.memory <= 8 * 2**30 and "no exact form fits 8.0 GiB" in plan.reason
    # a time budget alone can send auto to the approximation; none keeps it exact
    tight = plan_for(InfluenceConfig(time_budget_s=1.0), 3200, 10_000, 10, 2048)
    assert not tight.exact
    assert plan_for(InfluenceConfig(time_budget_s=None), 3200, 10_000, 10, 2048).exact
    # an exact form that only fits streamed is streamed, not given up
    streamed = plan_for(InfluenceConfig(memory_limit=int(8.5 * 2**30)), 10_000, 10_000, 10, 2048)
    assert streamed.exact and streamed.scores == "stream"


def test_no_form_fits_names_the_cheapest_and_its_need():
    x, y, xt, yt, w, b = clustered(40, 10, 5)
    with pytest.raises(InfluenceMemoryError, match=r"no influence form fits 1000 B .*: the cheapest, "
                       r"form 'direct' with held scores, needs about .* solver 'cg'"):
        compute_influence(x, y, xt, yt, w, b, InfluenceConfig(memory_limit=1000))
    with pytest.raises(InfluenceMemoryError, match=r"fits 1.0 GiB for 50000 training .* the cheapest, "
                       r"form 'kfac' with streamed scores, needs about 3.\d GiB"):
        plan_for(InfluenceConfig(memory_limit=2**30), 50_000, 10_000, 100, 2048)


@pytest.mark.parametrize("bad", [dict(form="kfac", damping=0.0), dict(form="ekfac", solver="eigh"),
                                 dict(form="kfac", precision="mixed")])
def test_kronecker_forms_where_they_do_not_apply_say_so(bad):
    x, y, xt, yt, w, b = clustered(20, 5, 4)
    with pytest.raises(ConfigError, match="form '.*kfac'|precision 'mixed'"):
        compute_influence(x, y, xt, yt, w, b, InfluenceConfig(**bad))
