"""The counted cost model: FLOPs per part, the caching rule, study totals, the dry run."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from robust_transfer.models import build_architecture
from robust_transfer.models.finetune import set_unfrozen_blocks
from robust_transfer.study.cost import (
    RunShape,
    Throughput,
    _counted,
    cached_splits,
    count_flops,
    run_work,
    study_cost,
)
from robust_transfer.study.presets import resolve_spec_path


def test_resnet50_forward_is_the_known_4_gmac_per_image():
    full = count_flops("resnet50", 224, "all")
    assert full.prefix == 0 and full.depth == 0
    assert full.forward == pytest.approx(2 * 4.09e9, rel=0.01)  # FLOPs = 2 x multiply-adds
    # a full training step: forward, weight and input gradients, but no input gradient
    # for the image itself: a little under 3 forwards
    assert 2.9 * full.forward < full.suffix_train < 3.0 * full.forward


@pytest.mark.parametrize("unfrozen", ["0", "1", "3", "9"])
def test_prefix_plus_suffix_is_the_whole_forward(unfrozen):
    whole = count_flops("resnet50", 224, "all").forward
    p = count_flops("resnet50", 224, unfrozen)
    assert p.depth == 17 - int(unfrozen)
    assert p.prefix + p.suffix_forward == pytest.approx(whole, rel=1e-6)
    assert p.suffix_train >= 2 * p.suffix_forward  # forward + weight gradients at least


def test_counts_equal_counting_the_real_model_on_the_cpu():
    torch.manual_seed(0)
    model = build_architecture("small_resnet", 10)
    set_unfrozen_blocks(model, 1)
    x = torch.rand(1, 3, 28, 28)
    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.cross_entropy(model.train()(x), torch.zeros(1, dtype=torch.long)).backward()
    p = count_flops("small_resnet", 28, "1")
    assert counter.get_total_flops() == pytest.approx(p.prefix + p.suffix_train)


def test_other_head_sizes_are_exact():
    for unfrozen in ("0", "3", "all"):
        assert count_flops("small_resnet", 28, unfrozen, 100) == _counted("small_resnet", 28, unfrozen, 100)


def test_caching_rule():
    assert cached_splits(depth=14, augmented=True) == (False, True)   # test images only
    assert cached_splits(depth=14, augmented=False) == (True, True)
    assert cached_splits(depth=0, augmented=False) == (False, False)  # unfrozen: all


def _shape(**kw) -> RunShape:
    base = dict(arch="resnet50", resolution=224, unfrozen="3", n=100, epochs=10, evals=5,
                test=1000, augmented=True, train_size=50000)
    return RunShape(**{**base, **kw})


def test_run_work_counts_each_part_once_per_use():
    s = _shape()
    p = count_flops("resnet50", 224, "3")
    w = run_work(s)
    assert w.train_step == pytest.approx(10 * 100 * p.suffix_train)
    assert w.train_prefix == pytest.approx(10 * 100 * p.prefix)  # augmented: every epoch
    assert w.eval_prefix == 0 and w.cache_fill == pytest.approx(1000 * p.prefix)
    assert w.eval_suffix == pytest.approx(5 * 1000 * p.suffix_forward)
    u = run_work(s, cache=False)
    assert u.eval_prefix == pytest.approx(5 * 1000 * p.prefix) and u.cache_fill == 0
    plain = run_work(_shape(augmented=False))
    assert plain.train_prefix == 0 and plain.cache_fill == pytest.approx(1100 * p.prefix)
    everything = run_work(_shape(unfrozen="all"))
    assert everything.cache_fill == 0 and everything.flops == run_work(_shape(unfrozen="all"), cache=False).flops


def test_study_shares_cache_fills_between_runs_of_one_key():
    rate = Throughput(forward=1e10, train=5e9, prepare=1e-3, augment=2e-3, overhead=0.5,
                      device="cpu", threads=1)
    shapes = [(_shape(n=n, augmented=False), ("natural", "mnist", 0)) for n in (100, 200)]
    shared = study_cost(shapes, True, {("resnet50", 224): rate})
    alone = study_cost(shapes, False, {("resnet50", 224): rate})
    p = count_flops("resnet50", 224, "3")
    # nested subsets of one seed: 200 training images and the test set, filled once
    assert shared.cached.cache_fill == pytest.approx((200 + 1000) * p.prefix)
    assert alone.cached.cache_fill == pytest.approx((300 + 2000) * p.prefix)
    assert shared.total_cached < alone.total_cached < alone.total_uncached
    assert shared.ratio == pytest.approx(shared.total_uncached / shared.total_cached)
    parts = shared.breakdown()
    assert sum(share for _, _, share in parts) == pytest.approx(1.0)
    assert parts == sorted(parts, key=lambda r: -r[1])


def test_throughput_turns_work_into_seconds():
    rate = Throughput(forward=2e9, train=1e9, prepare=0.01, augment=0.02, overhead=1.0,
                      device="cpu", threads=1)
    w = run_work(_shape(arch="small_resnet", resolution=28, n=10, epochs=1, evals=1, test=10))
    secs = rate.seconds(w)
    assert secs["train_step"] == pytest.approx(w.train_step / 1e9)
    assert secs["overhead"] == 1.0 and secs["inputs"] == pytest.approx(10 * 0.01 + 10 * 0.02 + 10 * 0.01)


def test_paper_grid_cost_counts_every_run_and_reports_the_ratio():
    from robust_transfer.study import plan_study

    plan = plan_study(resolve_spec_path("paper"), measure=False)
    est = plan.estimate
    assert est.cost.uncounted == 0 and math.isnan(est.seconds)
    assert est.cost.uncached.flops > est.cost.cached.flops > 0
    text = "\n".join(est.lines())
    assert "PFLOP with the prefix cache" in text and "not estimated" in text


def test_calibration_measures_positive_rates_and_the_dry_run_prints_time(tmp_path, capsys):
    from robust_transfer.cli import main
    from robust_transfer.study.cost import calibrate

    rate = calibrate("small_resnet", 16, "cpu", 1, image_size=8)
    assert rate.forward > 1e6 and rate.train > 1e6 and rate.overhead >= 0
    assert rate.prepare > 0 and rate.augment >= 0 and (rate.device, rate.threads) == ("cpu", 1)
    spec = tmp_path / "s.yaml"
    spec.write_text("sources: [fmnist-natural]\ntargets: [digits]\ntrain_images: [50]\n"
                    "unfrozen_blocks: [0, 1, all]\nepochs: 2\nrecipe: {resolution: 16}\n")
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "CPU-hours with caching" in out and "where the cached cost goes" in out
    assert "measured for small_resnet at 16 px on cpu (1 thread(s))" in out
    assert "input side on cpu per part of the grid" in out and "digits, unfrozen all" in out


def test_input_side_per_grid_part_says_which_parts_are_input_bound():
    from robust_transfer.study.estimate import input_shares

    # a fast model and slow augmentation: the augmented all-blocks part is input-bound,
    # the un-augmented head-only one (cached prefix: no input work per epoch) is not
    rate = Throughput(forward=1e14, train=1e14, prepare=1e-5, augment=1e-2, overhead=0.5,
                      device="cuda", threads=1)
    shapes = [(_shape(augmented=True, unfrozen="all"), ("natural", "cifar10", 0)),
              (_shape(augmented=True, unfrozen="all"), ("natural", "cifar10", 1)),
              (_shape(augmented=False, unfrozen=0), ("natural", "mnist", 0))]
    parts = {(p.target, p.unfrozen): p for p in input_shares(shapes, {("resnet50", 224): rate})}
    cifar, mnist = parts[("cifar10", "all")], parts[("mnist", "0")]
    assert cifar.runs == 2 and cifar.input_bound and cifar.share > 0.5
    assert not mnist.input_bound and mnist.share < 0.5
    assert "INPUT-BOUND" in cifar.line() and "model-bound" in mnist.line()
    slow_model = replace(rate, forward=1e9, train=1e9)  # a CPU-like rate: the model dominates
    assert not input_shares(shapes[:1], {("resnet50", 224): slow_model})[0].input_bound
