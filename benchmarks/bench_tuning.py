"""Beyond the paper on the embedded zoo: learning rates tuned on validation, robustness after transfer.

1. Runs (or reads, ``--study DIR``) ``studies/tuning.yaml`` and prints, per robust source,
   n and unfrozen setting, the robust-minus-natural test delta at the paper's single rate
   (0.1) beside the delta with each source at its own rate chosen on validation, and
   whether the verdict changes.
2. Prints clean and robust test accuracy (L2 PGD-20 at eps 0.25 on 200 balanced test
   images) of the fine-tuned models per source and n: does robustness survive transfer?
3. Times the robust evaluation's share of a run (default settings: 20 steps, 500
   images) against the same run without it, head only and last block, n=200, 15 epochs.

    python benchmarks/bench_tuning.py [--study runs/tuning] [--skip-overhead]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from robust_transfer.analysis.tuning import tuned_deltas, verdict_sentences
from robust_transfer.data import load_dataset
from robust_transfer.engine.transfer import Recipe, finetune
from robust_transfer.models.sources import load_source
from robust_transfer.study import load_results, load_spec, run_study

PRESET = Path(__file__).resolve().parents[1] / "studies" / "tuning.yaml"


def overhead(threads: int) -> None:
    source = load_source("fmnist-l2-eps0.25")
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    print("robust evaluation's share of a run (n=200, 15 epochs, batch 32, L2 eps 0.25, 20 steps, "
          "500 images):")
    for k in (0, 1):
        times = {}
        for robust in (None, 0.25):
            recipe = Recipe(lr=0.1, batch_size=32, robust_eps=robust, robust_norm="l2")
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                finetune(source, train, test, n=200, unfrozen=k, epochs=15, recipe=recipe)
                best = min(best, time.perf_counter() - t0)
            times[robust] = best
        print(f"  unfrozen {k}: {times[None]:.2f} s without, {times[0.25]:.2f} s with: "
              f"+{times[0.25] / times[None] - 1:.0%} (min of 3, {threads} threads)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default=None, help="a finished run of studies/tuning.yaml")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(args.study) if args.study else Path(tmp) / "tuning"
        if not args.study:
            t0 = time.perf_counter()
            run_study(load_spec(PRESET), study)
            print(f"tuning study: {time.perf_counter() - t0:.0f} s")
        runs, _ = load_results(study)
    deltas = tuned_deltas(runs)
    print(deltas[["source", "n", "unfrozen_blocks", "lr", "baseline_lr", "shared_delta",
                  "shared_lo", "shared_hi", "tuned_delta", "tuned_lo", "tuned_hi"]]
          .to_string(index=False, float_format=lambda v: f"{v:+.3f}"))
    for line in verdict_sentences(deltas):
        print("-", line)
    table = (runs.groupby(["source_eps", "source", "n", "unfrozen_blocks"])[["test_acc", "robust_acc"]]
             .mean().round(3))
    print("clean and robust test accuracy after transfer (mean over lr and seeds):")
    print(table.to_string())
    if not args.skip_overhead:
        overhead(args.threads)


if __name__ == "__main__":
    main()
