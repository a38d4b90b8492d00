"""Kernel and block (Woodbury) forms and mixed precision give the direct float64 scores."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robust_transfer.errors import ConfigError
from robust_transfer.events import StepDone
from robust_transfer.influence import InfluenceConfig, compute_influence
from robust_transfer.influence.analysis import smallest_k
from robust_transfer.influence.core import config_fields
from robust_transfer.influence.forms import choose_form, flop_estimates, gram
from robust_transfer.influence.solvers import ConvergenceError

F64 = torch.float64
BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def clustered(n, m, d, c=5, seed=0, spread=3.0):
    """Non-negative class-clustered features and a class-mean head: the benchmarks' own."""
    return _bench("bench_influence").synthetic(n, m, d, c, seed, spread)


def scores_close(out, ref, tol):
    scale = np.abs(ref.scores).max()
    assert np.abs(out.scores - ref.scores).max() <= tol * scale
    assert np.abs(out.train_scores - ref.train_scores).max() <= tol * scale
    assert np.abs(out.self_influence - ref.self_influence).max() <= tol * scale


@pytest.mark.parametrize("form", ["kernel", "block"])
@pytest.mark.parametrize("damping", [1e-1, 1e-3, 1e-5])
@pytest.mark.parametrize("n,d", [(30, 20), (80, 12)])  # fewer and more images than features
def test_woodbury_forms_equal_the_direct_form(form, damping, n, d):
    x, y, xt, yt, w, b = clustered(n, 9, d)
    ref = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(damping=damping, form="direct"))
    out = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(damping=damping, form=form))
    assert out.info["form"] == form and ref.info["form"] == "direct"
    scores_close(out, ref, 1e-9 if damping >= 1e-3 else 1e-7)  # the 1/damping cancellation


def test_woodbury_forms_with_test_targets_only():
    x, y, xt, yt, w, b = clustered(25, 40, 15)
    ref = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(form="direct", train_targets=False))
    for form in ("kernel", "block"):
        out = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(form=form, train_targets=False))
        assert out.train_scores is None
        assert np.abs(out.scores - ref.scores).max() <= 1e-9 * np.abs(ref.scores).max()


def test_block_form_over_several_test_row_passes_equals_the_direct_form():
    # 600 test rows: two full passes of 256 rows and a partial one of 88
    x, y, xt, yt, w, b = clustered(40, 600, 10)
    ref = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(form="direct"))
    out = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(form="block"))
    scores_close(out, ref, 1e-9)
    assert not np.array_equal(out.scores[:256], out.scores[256:512])  # each pass its own rows


def test_block_form_in_float32_is_measurably_less_exact():
    from robust_transfer.influence.core import _gradient_problem
    from robust_transfer.influence.forms import run_block

    x, y, xt, yt, w, b = clustered(60, 300, 12)
    problem = _gradient_problem(x, y, xt, yt, w, b, True)
    ref, ref_train, _ = run_block(problem, 1e-3)
    low, low_train, _ = run_block(problem, 1e-3, dtype=torch.float32)
    assert low.dtype == F64 and low_train.dtype == F64
    err = (low - ref).abs().max() / ref.abs().max()
    assert 1e-9 < err < 1e-2  # float32 rounding, amplified by the conditioning, not a wrong formula


def test_auto_picks_the_cheapest_form_that_applies():
    pick = lambda n, m, d, lam=1e-3, solver="cholesky", prec="float64": choose_form(  # noqa: E731
        "auto", n, m, 10, d, lam, solver, prec)
    assert pick(200, 1000, 2048) == "kernel"  # the paper's small studies
    assert pick(3200, 10000, 2048) == "block"  # the paper's influence setting
    assert pick(3200, 10000, 2048, lam=0.0) == "direct"  # Woodbury divides by the damping
    assert pick(3200, 10000, 2048, prec="mixed") == "direct"
    assert pick(200, 100, 2048, solver="eigh") == "direct"
    costs = flop_estimates(200, 1000, 10, 2048)
    assert costs["direct"] > 10 * costs["kernel"]


def test_woodbury_form_where_it_does_not_apply_says_so():
    x, y, xt, yt, w, b = clustered(20, 5, 6)
    with pytest.raises(ConfigError, match="form 'kernel' needs damping > 0.*--form direct"):
        compute_influence(x, y, xt, yt, w, b, InfluenceConfig(damping=0.0, form="kernel"))


def test_mixed_precision_refines_to_the_float64_scores():
    x, y, xt, yt, w, b = clustered(300, 60, 40, c=10)
    ref = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(form="direct"))
    out = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(form="direct", precision="mixed"))
    assert out.info["precision"] == "mixed" and out.info["refine_iterations"] >= 1
    scores_close(out, ref, 1e-10)
    assert np.array_equal(np.argsort(out.scores, 1)[:, :10], np.argsort(ref.scores, 1)[:, :10])
    assert out.info["refine_relative_correction"] <= 1e-10


def test_refinement_that_misses_its_tolerance_says_by_how_much():
    x, y, xt, yt, w, b = clustered(60, 5, 10)
    cfg = InfluenceConfig(form="direct", precision="mixed", refine_max_iter=1, refine_tol=1e-30)
    with pytest.raises(ConvergenceError, match=r"correction was .* of the solution after 1 "
                       r"iterations.*x off.*precision 'float64'"):
        compute_influence(x, y, xt, yt, w, b, cfg)


@pytest.mark.parametrize("bad,message", [
    (dict(precision="half"), "unknown influence precision 'half'; valid: float64, mixed"),
    (dict(form="dense"), "unknown influence form 'dense'; valid: auto, direct, kernel, block"),
    (dict(precision="mixed", solver="eigh"), "precision 'mixed' applies to solver 'cholesky'"),
    (dict(refine_max_iter=0), "refine_max_iter must be >= 1"),
])
def test_bad_precision_or_form_is_one_clear_line(bad, message):
    with pytest.raises(ConfigError, match=message) as err:
        InfluenceConfig(**bad)
    assert "\n" not in str(err.value)


def test_smallest_k_equals_a_stable_full_sort():
    rng = np.random.default_rng(0)
    key = np.round(rng.normal(size=(300, 200)), 1)  # many ties
    key[:, 50] = key[:, 10]
    for k in (0, 1, 7, 199, 200):
        assert np.array_equal(smallest_k(key, k), np.argsort(key, 1, kind="stable")[:, :k])


def test_gram_is_the_symmetric_product():
    a = torch.randn(50, 30, dtype=F64)
    assert torch.allclose(gram(a), a @ a.T, atol=1e-12)
    assert torch.allclose(gram(a.float()), (a @ a.T).float(), atol=1e-4)
    for rows, cols in ((900, 300), (1203, 170)):  # banded: 2 bands, then 3 with a ragged last
        a = torch.randn(rows, cols, dtype=F64)
        for t, tol in ((a, 1e-12), (a.float(), 1e-4)):
            out = gram(t)
            assert out.dtype == t.dtype and torch.equal(out, out.T)  # exactly symmetric
            assert torch.allclose(out, t @ t.T, rtol=tol, atol=tol * cols)


def test_config_fields_give_cli_rows():
    rows = {f.name: f for f in config_fields()}
    assert rows["precision"].flag == "--precision" and rows["precision"].choices == ["float64", "mixed"]
    assert rows["form"].choices == ["auto", "direct", "kernel", "block", "kfac", "ekfac"]
    assert rows["train_targets"].flag == "--no-train-targets" and rows["train_targets"].type is bool
    assert rows["damping"].type is float and rows["damping"].default == 1e-3
    assert rows["refine_max_iter"].type is int and "cholesky" in rows["solver"].choices
    assert all(f.help for f in rows.values())


@functools.cache
def _bench(name):
    """A benchmark module of ``benchmarks/`` (they import each other by name)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def test_faithful_paper_path_equals_our_pinv_solver():
    paper = _bench("bench_influence_paper")
    x, y, xt, yt, w, b = clustered(24, 6, 5, c=3)
    layer = paper.paper_head(w.float(), b.float())
    h = paper.paper_hessian(layer, x.float(), y)  # batch size 1, summed
    scores = paper.paper_influences(paper.paper_grads(layer, xt.float(), yt), paper.paper_pinv(h),
                                    paper.paper_grads(layer, x.float(), y))
    ours = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(damping=0.0, solver="pinv",
                                                                 train_targets=False))
    assert h.shape == (3 * 6, 3 * 6) and h.dtype == np.float64
    assert np.abs(-len(x) * scores - ours.scores).max() <= 1e-5 * np.abs(ours.scores).max()


@pytest.mark.parametrize("cfg", [
    dict(form="direct"), dict(form="direct", train_targets=False), dict(form="direct", precision="mixed"),
    dict(form="kernel"), dict(form="block"), dict(solver="eigh"), dict(solver="pinv", damping=0.0),
    dict(solver="cg", cg_batch=7),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_every_solve_reports_its_steps_to_the_end(cfg):
    x, y, xt, yt, w, b = clustered(30, 300, 8)  # 300 test rows: two passes of the block form
    events = []
    out = compute_influence(x, y, xt, yt, w, b, InfluenceConfig(**cfg), callback=events.append)
    assert out.scores.shape == (300, 30) and events
    assert {type(e) for e in events} == {StepDone}
    done = [e.done for e in events]
    totals = {e.total for e in events}
    assert len(totals) == 1 and done == sorted(done) and done[-1] == totals.pop()
    assert all(e.what for e in events)
    if cfg == dict(form="block"):  # 5 class blocks, then 2 passes over test rows
        assert done == list(range(1, 8)) and events[-1].what == "test rows"


def test_steps_of_several_models_count_over_all_of_them():
    from robust_transfer.influence.outputs import _per_model

    seen: list[StepDone] = []
    for i, name in enumerate(("robust", "natural")):
        step = _per_model(seen.append, name, i, 2)
        for done in (1, 2):
            step(StepDone(done, 3, "class blocks"))
        step("step", {"done": 3, "total": 3, "what": "class blocks"})  # the old form, too
    assert [s.done for s in seen] == [1, 2, 3, 4, 5, 6] and {s.total for s in seen} == {6}
    assert seen[0].what == "robust: class blocks" and seen[-1].what == "natural: class blocks"
    assert _per_model(None, "robust", 0, 2) is None
