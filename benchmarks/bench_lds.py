"""Linear datamodeling score (LDS) of the influence methods on the embedded study (issue 19).

Runs of the embedded study (``robust-transfer study presets embedded``: zoo sources
fine-tuned on digits, 15 epochs, its recipe), head-only (``unfrozen 0``) and last-block
(``unfrozen 1``): each run is fine-tuned, its n training images scored by every method,
and the source fine-tuned again on ``--subsets`` random halves with the run's recipe; the
LDS is the Spearman correlation over subsets of predicted and actual test margins, per
test image, averaged over the test images (95% t-interval over test images). Methods: exact
last-layer influence (damping 1e-3), kronfluence's K-FAC and EK-FAC over the head (its
heuristic damping), and EK-FAC through the head and the unfrozen block (last-block runs).
The question: does scoring through the fine-tuned block beat the last layer on last-block
runs? The last lines print, per last-block run, EK-FAC-through-blocks minus each
last-layer method, paired over test images (95% t-interval).

    .venv/bin/python benchmarks/bench_lds.py [--sources natural l2-eps1] [--n 100 200]
        [--subsets 50] [--fraction 0.5] [--seed 0] [--methods ...]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from robust_transfer.influence.lds import METHODS, LDSConfig, RunLDS, lds_for_run
from robust_transfer.models.sources import load_source
from robust_transfer.study.spec import expand, load_spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", nargs="+", default=["natural", "l2-eps1"])
    p.add_argument("--n", nargs="+", type=int, default=[100, 200])
    p.add_argument("--unfrozen", nargs="+", type=int, default=[0, 1])
    p.add_argument("--seed", type=int, default=0, help="the runs' fine-tuning seed")
    p.add_argument("--subsets", type=int, default=50)
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--methods", nargs="+", default=METHODS.names(), choices=METHODS.names())
    args = p.parse_args()
    torch.set_num_threads(1)  # as the study's runs
    runs = [r for r in expand(load_spec("embedded")) if r.source in args.sources
            and r.n in args.n and r.unfrozen_blocks in args.unfrozen and r.seed == args.seed]
    print(f"load average {os.getloadavg()[0]:.1f}; {len(runs)} runs, {args.subsets} subsets of "
          f"fraction {args.fraction}, all test images")
    print(f"{'run':<34} {'method':<24} {'LDS':>6}  95% interval      test acc (subsets)  seconds")
    results: dict[str, RunLDS] = {}
    for run in runs:
        label = f"{run.source} n={run.n} unfrozen={run.unfrozen_blocks}"
        t0 = time.perf_counter()
        out = lds_for_run(run, load_source(run.source_model), args.methods,
                          LDSConfig(subsets=args.subsets, fraction=args.fraction))
        results[label] = out
        for method, r in out.results.items():
            print(f"{label:<34} {method:<24} {r.mean:6.3f}  [{r.low:.3f}, {r.high:.3f}]    "
                  f"{out.test_acc:.3f} ({out.subset_test_acc:.3f})      "
                  f"{out.seconds.get('scores/' + method, 0):.1f}")
        print(f"{label:<34} (finetune {out.seconds['finetune']:.1f} s, {args.subsets} retrains "
              f"{out.seconds['retrain']:.1f} s, wall {time.perf_counter() - t0:.1f} s)", flush=True)
    _paired(results)


def _paired(results: dict[str, RunLDS]) -> None:
    from scipy import stats as sps

    print("\nEK-FAC through blocks minus last-layer methods, paired over test images:")
    for label, out in results.items():
        blocks = out.results.get("ekfac-blocks")
        if blocks is None:
            continue
        for method, r in out.results.items():
            if method == "ekfac-blocks":
                continue
            d = blocks.per_test - r.per_test
            d = d[np.isfinite(d)]
            half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
            print(f"  {label:<34} minus {method:<24} {d.mean():+.3f} "
                  f"[{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]")


if __name__ == "__main__":
    main()
