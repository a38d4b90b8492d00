"""Time the analysis of a 15,000-run synthetic study, figures and report included.

Target (issues 4 and 9: under 10 s; issue 20: at most 8 s) on the 2-core CPU machine,
for the whole report:
statistics, factors, verdict, headlines and tables, then every figure (verdict heatmaps,
Figs. 1-3) as PNG and SVG, the tables as CSV and Parquet, HTML and Markdown. The study
generator (a test fixture, tests/analysis/synthetic_study.py) is timed separately and not
counted. CPU seconds include the processes the figures are drawn in.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_analysis.py [--bootstrap] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "analysis"))
from synthetic_study import SyntheticStudy, make_study  # noqa: E402  (a test fixture)

from robust_transfer.analysis import CIOptions  # noqa: E402
from robust_transfer.analysis.report import compute, write_report  # noqa: E402

STUDY = SyntheticStudy(
    targets=("digits", "fashion-mnist", "cifar10", "svhn", "kmnist"),
    ns=(100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600),
    unfrozen=("0", "1", "3", "all"),
    budgets=(5, 10, 20),
    seeds=tuple(range(7)),
)  # 4 sources x 5 targets x 9 n x 4 unfrozen x 3 budgets x 7 seeds = 15,120 runs


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the figure workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Clock:
    """Wall and CPU seconds since the last ``lap`` (CPU time is what a busy machine hides)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), _cpu()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), _cpu()
        lap = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return lap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", action="store_true", help="bootstrap intervals")
    parser.add_argument("--out", type=Path, help="report directory (default: a temp dir)")
    args = parser.parse_args()
    clock = Clock()
    runs, epochs = make_study(STUDY)
    wall, _ = clock.lap()
    print(f"generated {len(runs):,} runs and {len(epochs):,} epoch rows in {wall:.2f} s")
    options = CIOptions(method="bootstrap" if args.bootstrap else "t")
    with tempfile.TemporaryDirectory() as tmp:
        clock.lap()
        result = compute(runs, epochs, None, options, total_runs=len(runs))
        numbers = clock.lap()
        result = write_report(result, args.out or Path(tmp))
        report = clock.lap()
        size = result.html_path.stat().st_size / 1e6
    print(f"{'step':<52}{'wall s':>8}{'cpu s':>8}")
    print(f"{f'statistics, factors, headlines, tables ({options.method})':<52}"
          f"{numbers[0]:>8.2f}{numbers[1]:>8.2f}")
    print(f"{f'{len(result.figures)} figures, tables, HTML ({size:.1f} MB), MD':<52}"
          f"{report[0]:>8.2f}{report[1]:>8.2f}")
    print(f"{'analysis total (target <= 8 s)':<52}{numbers[0] + report[0]:>8.2f}"
          f"{numbers[1] + report[1]:>8.2f}")
    print(f"load average while running: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
