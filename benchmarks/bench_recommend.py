"""Does the cheap head-only probe of ``recommend`` pick the source fine-tuning would pick?

Runs ``recommend`` on digits for the embedded zoo at each n of the embedded study (3
seeds, validation images held out of the training pool), then compares its source
ranking with the outcome of the embedded fine-tuning study (final test accuracy, mean
over 3 seeds) at each n and unfrozen setting: the Spearman rank correlation of the four
sources, and whether the recommended source is the study's best.

Timed: each ``recommend`` call (its target is < 60 s on the 2-core CPU). The study is
run here (about a minute) unless ``--study DIR`` names a finished embedded study.

    python benchmarks/bench_recommend.py [--study runs/demo]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from robust_transfer.recommend import recommend
from robust_transfer.study import load_results, load_spec, run_study

PRESET = Path(__file__).resolve().parents[1] / "studies" / "embedded.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default=None, help="a finished run of studies/embedded.yaml")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(PRESET)
    label_of = {s.model: s.label for s in spec.sources}
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(args.study) if args.study else Path(tmp) / "embedded"
        if not args.study:
            t0 = time.perf_counter()
            run_study(spec, study)
            print(f"embedded study: {time.perf_counter() - t0:.0f} s")
        runs, _ = load_results(study)
    outcome = runs.groupby(["n", "unfrozen_blocks", "source"])["test_acc"].mean()
    print(f"{'n':>4} {'k':>3}  {'spearman':>8}  {'probe best':<18} {'study best':<18} {'probe s':>7}")
    for n in sorted(runs["n"].unique()):
        t0 = time.perf_counter()
        rec = recommend("digits", int(n), list(label_of), seeds=(0, 1, 2))
        took = time.perf_counter() - t0
        probe = {label_of[s.name]: s.mean for s in rec.scores}
        for k in sorted(runs["unfrozen_blocks"].unique(), key=str):
            study_means = outcome.xs((n, k), level=("n", "unfrozen_blocks"))
            labels = sorted(probe)
            rho = spearmanr([probe[lb] for lb in labels], [study_means[lb] for lb in labels])[0]
            print(f"{n:>4} {k:>3}  {rho:>8.2f}  {max(probe, key=probe.get):<18} "
                  f"{study_means.idxmax():<18} {took:>7.1f}")


if __name__ == "__main__":
    main()
