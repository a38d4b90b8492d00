"""A store of 15,000 finished runs opens, reports its status and exports in under 5 seconds.

The store is filled through the same API the driver uses (plan, then one transaction per
finished run with 10 epochs each). Timed separately, each from a fresh connection: the
status (``study status``), ``load_results`` (what the analysis reads) and the CSV and
Parquet exports.

    .venv/bin/python benchmarks/bench_study_store.py [--runs 15000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from robust_transfer.engine.transfer import Recipe
from robust_transfer.study import export_results, load_results, study_status
from robust_transfer.study.spec import RunConfig
from robust_transfer.study.store import RunOutcome, StudyStore, run_row

SOURCE = {"eps": 0.0, "norm": "none"}


def fill(study_dir: Path, runs: int, epochs: int = 10) -> float:
    start = time.perf_counter()
    configs = [RunConfig("natural", "fmnist-natural", "digits", 100 + i % 7, "0", epochs, i, Recipe())
               for i in range(runs)]
    with StudyStore(study_dir, create=True) as store:
        spec_id = store.add_spec("bench", runs, "bench", "name: bench\n")
        store.plan((run_row(c.to_dict(), SOURCE) for c in configs), spec_id)
        for c in configs:
            history = tuple({"epoch": e, "lr": 0.1, "train_loss": 1.0 / e, "train_acc": 0.9,
                             "test_loss": 1.1 / e, "test_acc": 0.8} for e in range(1, epochs + 1))
            store.record(RunOutcome(c.run_id, "finished", 0.0, 1.0, "host", "1", "cpu", c.n,
                                    True, history))
    return time.perf_counter() - start


def timed(label: str, fn) -> float:
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    print(f"  {label}: {seconds:.2f}s")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study"
        print(f"filled {args.runs} finished runs (10 epochs each) in {fill(study, args.runs):.1f}s, "
              f"{(study / 'study.db').stat().st_size / 1e6:.1f} MB")
        status = timed("open + status", lambda: study_status(study))
        timed("load_results (the analysis' frames)", lambda: load_results(study))
        for fmt in ("csv", "parquet"):
            export = timed(f"open + export {fmt} (reads the frames itself)",
                           lambda f=fmt: export_results(study, f))
            print(f"open + status + export {fmt}: {status + export:.2f}s (target < 5 s)")


if __name__ == "__main__":
    main()
