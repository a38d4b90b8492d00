"""Scheduling and store overhead of the local executor.

Target (issue 3): the local executor's overhead is at most 5% of the wall time of a study
of 1-second runs. The baseline calls the run function directly in a loop; the study does
the same runs through ``run_study`` (spec checks, planning, marking runs started, one
transaction per finished run, progress). Runs are stand-ins that sleep 1 s and return a
10-epoch history, so the difference is the study machinery alone; the baseline loads the
source and the target once, as any loop must (the study runs first and so also pays the
one-time imports). Then real fine-tuning
runs, where the overhead is the study's wall time minus the time spent inside the runs.

    .venv/bin/python benchmarks/bench_study_overhead.py [--runs 30]

The Ray executor's overhead: ``benchmarks/bench_study_ray.py``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from robust_transfer.data import data_root
from robust_transfer.models.zoo import embedded_models
from robust_transfer.study import load_spec, run_study
from robust_transfer.study.resolve import load_split
from robust_transfer.study.store import RunOutcome
from robust_transfer.study.worker import RunContext, RunTask, cached_source

SECONDS = 1.0


def one_second_run(task: RunTask, ctx: RunContext) -> RunOutcome:
    """A run of exactly one second with a 10-epoch history (module level: picklable)."""
    start = time.time()
    time.sleep(SECONDS)
    history = tuple({"epoch": e, "lr": 0.1, "train_loss": 0.5, "train_acc": 0.9,
                     "test_loss": 0.6, "test_acc": 0.85, "seconds": 0.1} for e in range(1, 11))
    return RunOutcome(task.run_id, "finished", start, time.time(), n=100, history=history)


def spec_for(runs: int, source: str, epochs: int = 1):
    return load_spec({"name": "bench-overhead", "sources": [{"model": source, "label": "s"}],
                      "targets": ["digits"], "train_images": [100], "epochs": epochs,
                      "seeds": list(range(runs)), "recipe": {"batch_size": 64}})


def direct_loop(spec, run_fn) -> float:
    """What a hand-written loop pays: load the source and the target once, then run."""
    from robust_transfer.models.sources import load_source

    fresh_caches()
    start = time.perf_counter()
    load_source(spec.sources[0].model)
    load_split("digits", "train", str(data_root()))
    load_split("digits", "test", str(data_root()))
    ctx = RunContext({}, "", "cpu")
    for run in spec.runs():
        run_fn(RunTask(run.run_id, run), ctx)
    return time.perf_counter() - start


def fresh_caches() -> None:
    """Forget loaded datasets and sources, so each measurement pays for loading them."""
    load_split.cache_clear()
    cached_source.cache_clear()


def study_wall(spec, out: Path, **kwargs) -> tuple[float, float]:
    """Wall time of ``run_study`` and the time spent inside runs."""
    fresh_caches()
    start = time.perf_counter()
    summary = run_study(spec, out, **kwargs)
    wall = time.perf_counter() - start
    assert summary.failed == 0, summary.failures
    from robust_transfer.study import load_results

    runs, _ = load_results(out)
    return wall, float(runs["seconds"].sum())


def report(name: str, wall: float, baseline: float) -> None:
    overhead = wall - baseline
    print(f"{name}: study {wall:.2f}s vs baseline {baseline:.2f}s -> overhead {overhead:.2f}s "
          f"= {100 * overhead / wall:.2f}% of wall time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    source = embedded_models()[0]["name"]
    spec = spec_for(args.runs, source)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wall, _ = study_wall(spec, root / "local", run_fn=one_second_run)  # first: pays imports
        baseline = direct_loop(spec, one_second_run)
        report(f"local, in process, {args.runs} x 1 s runs", wall, baseline)
        wall, _ = study_wall(spec, root / "pool", workers=2, run_fn=one_second_run)
        report(f"local, 2 processes, {args.runs} x 1 s runs", wall, baseline / 2)
        real = spec_for(args.runs, source, epochs=10)
        wall, inside = study_wall(real, root / "real")
        report(f"local, in process, {args.runs} real runs (mean {inside / args.runs:.2f}s)", wall, inside)


if __name__ == "__main__":
    main()
