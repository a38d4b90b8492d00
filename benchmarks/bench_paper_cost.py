"""Counted cost of the paper's grid (the paper preset), cached against uncached, and a
check of the cost model against measured wall time on rehearsal-sized runs.

1. ``paper``: every run of the ``paper`` preset counted in FLOPs per part
   (:mod:`robust_transfer.study.cost`), turned into CPU-hours (or GPU-hours on a GPU) by
   a calibration of ResNet-50 at 224 px on this machine, with the prefix cache and without
   it; the ratio, and where the cached cost goes (by part, by target, by n). Nothing of
   the grid is run: its time is extrapolated from the counts and the calibration.
2. ``validate``: rehearsal-sized ResNet-50 runs at 224 px (random weights, synthetic
   colour images, 10 classes; unfrozen 0, 1, 3, 9 and all; augmented and not) are run
   for real, one after another in this process, and each run's measured wall time is set
   beside its prediction (same calibration). Target: within 30%.

Usage:
    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_paper_cost.py [--threads 1]
        [--skip-validate] [--n 10] [--test 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from robust_transfer.data import DatasetInfo, ImageArrays
from robust_transfer.engine.transfer import Recipe, finetune
from robust_transfer.models import build_architecture
from robust_transfer.study import plan_study
from robust_transfer.study.cost import PART_NAMES, RunShape, calibrate, run_work, study_cost
from robust_transfer.study.estimate import run_shape
from robust_transfer.study.presets import resolve_spec_path
from robust_transfer.study.resolve import resolve_study


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (studies use 1 per run)")
    p.add_argument("--skip-validate", action="store_true", help="only the paper grid's cost")
    p.add_argument("--n", type=int, default=10, help="training images per validation run")
    p.add_argument("--test", type=int, default=20, help="test images per validation run")
    return p.parse_args()


def paper(threads: int) -> None:
    spec_path = resolve_spec_path("paper")
    t0 = time.perf_counter()
    plan = plan_study(spec_path, measure=False)
    resolved = resolve_study(plan.spec)
    runs = plan.spec.runs()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rate = calibrate("resnet50", 224, device, threads)
    rates = {("resnet50", 224): rate}
    shapes = [(run_shape(resolved, r), (r.source, r.target, r.seed)) for r in runs]
    cost = study_cost(shapes, plan.spec.feature_cache, rates)
    unit = "GPU-hours" if device == "cuda" else "CPU-hours"
    print(f"== paper preset: {len(runs)} runs, counted in {time.perf_counter() - t0:.0f} s")
    print(f"calibration ({device}, {threads} thread(s)): ResNet-50 at 224 px forward "
          f"{rate.forward / 1e9:.1f} GFLOP/s, training step {rate.train / 1e9:.1f} GFLOP/s, "
          f"input preparation {1e3 * rate.prepare:.2f} ms/image, augmentation "
          f"{1e3 * rate.augment:.2f} ms/image, per-run set-up {rate.overhead:.2f} s")
    print(f"FLOPs: cached {cost.cached.flops / 1e18:,.2f} EFLOP, uncached "
          f"{cost.uncached.flops / 1e18:,.2f} EFLOP: {cost.uncached.flops / cost.cached.flops:.2f}x")
    print(f"time on this machine (extrapolated, one run at a time): cached "
          f"{cost.total_cached / 3600:,.0f} {unit}, uncached {cost.total_uncached / 3600:,.0f} "
          f"{unit}: ratio {cost.ratio:.2f}x (target >= 10x)")
    print("where the cached cost goes:")
    for name, secs, share in cost.breakdown():
        print(f"  {share:6.1%}  {secs / 3600:12,.0f} {unit}  {name}")
    print("uncached, by part:")
    for key, secs in sorted(cost.seconds_uncached.items(), key=lambda kv: -kv[1]):
        if secs:
            print(f"  {secs / cost.total_uncached:6.1%}  {secs / 3600:12,.0f} {unit}  {PART_NAMES[key]}")
    print("by target (cached):")
    for target, secs in sorted(cost.by_target.items(), key=lambda kv: -kv[1]):
        print(f"  {secs / cost.total_cached:6.1%}  {target}")
    print("by sub-grid (cached vs uncached):")
    for label, keep in (("n <= 1,600 (100 epochs)", lambda s: s.n <= 1600),
                        ("3,200 <= n <= 25,600", lambda s: 1600 < s.n <= 25600),
                        ("n = all", lambda s: s.n > 25600)):
        sub = study_cost([x for x in shapes if keep(x[0])], plan.spec.feature_cache, rates)
        print(f"  {label:26s} cached {sub.total_cached / 3600:10,.0f} {unit}, uncached "
              f"{sub.total_uncached / 3600:10,.0f}: {sub.ratio:.2f}x")
    print(f"  {'(MNIST-like targets only)':26s} ", end="")
    sub = study_cost([x for x in shapes if not x[0].augmented], plan.spec.feature_cache, rates)
    print(f"cached {sub.total_cached / 3600:10,.0f} {unit}, uncached {sub.total_uncached / 3600:10,.0f}: "
          f"{sub.ratio:.2f}x")


def synthetic(n: int, split: str, seed: int) -> ImageArrays:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    centres = torch.randint(40, 216, (10, 3, 1, 1), generator=torch.Generator().manual_seed(0))
    images = (centres[labels].float() + torch.randn(n, 3, 32, 32, generator=g) * 30)
    info = DatasetInfo("bench-colour", tuple(map(str, range(10))), 3, 32)
    return ImageArrays(images.clamp(0, 255).to(torch.uint8), labels, info, split)


def validate(threads: int, n: int, n_test: int) -> None:
    torch.set_num_threads(threads)
    rate = calibrate("resnet50", 224, "cpu", threads, image_size=32)
    torch.manual_seed(0)
    source = build_architecture("resnet50", 1000).eval()
    train, test = synthetic(2 * n, "train", 1), synthetic(n_test, "test", 2)
    print(f"== validation: ResNet-50 at 224 px, n={n}, {n_test} test images, 1 epoch, "
          f"{threads} thread(s), runs one after another in this process")
    print(f"{'unfrozen':>8} {'augment':>7} {'cached':>13} {'predicted s':>11} {'measured s':>10} {'error':>7}")
    errors, total_pred, total_meas = [], 0.0, 0.0
    for augment in (True, False):
        for unfrozen in ("0", "1", "3", "9", "all"):
            recipe = Recipe(batch_size=128, augment=augment, resolution=224, head_init="paper")
            start = time.perf_counter()
            result = finetune(source, train, test, n=n, unfrozen=unfrozen if unfrozen == "all" else int(unfrozen),
                              epochs=1, recipe=recipe, device="cpu", source_id="bench")
            measured = time.perf_counter() - start
            cached = _observed(result)
            shape = RunShape("resnet50", 224, unfrozen, n, 1, 1, n_test, augment, 10, 2 * n, 32)
            predicted = sum(rate.seconds(run_work(shape, cached=cached)).values())
            err = predicted / measured - 1
            errors.append(err)
            total_pred, total_meas = total_pred + predicted, total_meas + measured
            print(f"{unfrozen:>8} {str(augment):>7} {str(cached):>13} {predicted:11.2f} "
                  f"{measured:10.2f} {err:+7.1%}")
    worst = max(errors, key=abs)
    print(f"total: predicted {total_pred:.1f} s, measured {total_meas:.1f} s "
          f"({total_pred / total_meas - 1:+.1%}); worst run {worst:+.1%} (target within 30%)")


def _observed(result) -> tuple[bool, bool]:
    """(train, test) cached as the engine reports it."""
    plan = result.info.get("cache") if isinstance(result.info, dict) else None
    if isinstance(plan, dict) and "train" in plan:
        return bool(plan["train"]), bool(plan["test"])
    return bool(result.cached_prefix), bool(result.cached_prefix)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    paper(args.threads)
    if not args.skip_validate:
        validate(args.threads, args.n, args.test)


if __name__ == "__main__":
    main()
