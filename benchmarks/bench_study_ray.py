"""Overhead of the Ray executor on a local cluster, for 1-second runs.

Three numbers: a cold study (``run_study`` starts a 2-CPU cluster, starts its workers,
runs, stops it), the cluster's start and stop alone, and a warm study on a running cluster
whose workers are up, against the ideal ``runs x 1 s / 2 workers``.

    .venv/bin/python benchmarks/bench_study_ray.py [--runs 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench_study_overhead import SECONDS, one_second_run, spec_for

from robust_transfer.models.zoo import embedded_models
from robust_transfer.study import run_study

WORKERS = 2


def timed(spec, out: Path) -> float:
    start = time.perf_counter()
    summary = run_study(spec, out, executor="ray", workers=WORKERS, run_fn=one_second_run)
    assert summary.failed == 0, summary.failures
    return time.perf_counter() - start


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    source = embedded_models()[0]["name"]
    spec, warmup = spec_for(args.runs, source), spec_for(WORKERS, source)
    ideal = args.runs * SECONDS / WORKERS
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cold = timed(spec, root / "cold")
        start_stop = timed(spec, root / "cold")  # all finished: cluster start and stop only
        ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
        try:
            timed(warmup, root / "warmup")  # starts the worker processes
            warm = timed(spec, root / "warm")
        finally:
            ray.shutdown()
    print(f"ray, {args.runs} x {SECONDS:g} s runs on {WORKERS} workers (ideal {ideal:.1f}s):")
    print(f"  cold study {cold:.2f}s: overhead {cold - ideal:.2f}s, of which cluster start+stop "
          f"{start_stop:.2f}s and the rest mostly starting worker processes")
    print(f"  warm cluster {warm:.2f}s: overhead {warm - ideal:.2f}s = "
          f"{100 * (warm - ideal) / warm:.1f}% of wall time, "
          f"{1000 * (warm - ideal) / args.runs:.0f} ms per run")


if __name__ == "__main__":
    main()
