"""The SLURM executor on a one-node SLURM on this machine: overhead, and faults.

1. Overhead on 10-second runs (stand-ins that sleep; target: at most 5% over the local
   executor): the same study through the local executor (a pool of 2 processes) and
   through SLURM (2 CPUs, 1 per job), side by side in this process. SLURM is measured
   with one run per job (each job pays its start: a Python process importing torch) and
   with ``runs_per_job`` = runs / 2 (two jobs, like the local pool's two workers).
2. Faults: a study of short runs whose driver is SIGKILLed 5 times at random moments
   (and restarted) while 3 running jobs are ``scancel``led; then one driver finishes it.
   Counted: runs lost (not finished in the store), runs recorded twice (epoch rows beyond
   the run's epochs) and runs executed to the end by more than one job (submitit's result
   pickles).

    .venv/bin/python benchmarks/bench_study_slurm.py [--runs 8] [--seconds 10] [--parts overhead]

Needs root and Debian's slurm-wlm and munge (``scripts/system_deps.sh --test``): it starts
the cluster of the tests (``tests/study/slurm_cluster.py``) in a temporary folder and
stops it at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "study"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_study_overhead import spec_for  # noqa: E402
from slurm_cluster import LocalSlurm, cannot_run  # noqa: E402

from robust_transfer.models.zoo import embedded_models  # noqa: E402
from robust_transfer.study import load_results, run_study  # noqa: E402
from robust_transfer.study.slurm_jobs import JobTable, SlurmOptions  # noqa: E402
from robust_transfer.study.store import RunOutcome  # noqa: E402
from robust_transfer.study.worker import RunContext, RunTask  # noqa: E402

WORKERS = 2
EPOCHS = 3


def sleep_run(task: RunTask, ctx: RunContext) -> RunOutcome:
    """A stand-in run of ``RT_BENCH_SECONDS`` seconds with a 3-epoch history."""
    start = time.time()
    time.sleep(float(os.environ.get("RT_BENCH_SECONDS", "10")))
    history = tuple({"epoch": e, "lr": 0.1, "train_loss": 0.5, "train_acc": 0.9,
                     "test_loss": 0.6, "test_acc": 0.85, "seconds": 0.1} for e in range(1, EPOCHS + 1))
    return RunOutcome(task.run_id, "finished", start, time.time(), n=100, history=history)


def timed(spec, out: Path, executor: str, slurm: SlurmOptions | None = None) -> float:
    start = time.perf_counter()
    summary = run_study(spec, out, executor, workers=WORKERS, run_fn=sleep_run, slurm=slurm)
    assert summary.failed == 0 and summary.finished == len(spec.runs()), summary.failures
    return time.perf_counter() - start


def overhead(runs: int, seconds: float, root: Path) -> None:
    source = embedded_models()[0]["name"]
    spec = spec_for(runs, source)
    ideal = runs * seconds / WORKERS
    rows = [("local, 2 processes", timed(spec, root / "local", "local"))]
    for per_job in (1, runs // WORKERS):
        opts = SlurmOptions(time="10", poll_seconds=2, runs_per_job=per_job)
        rows.append((f"slurm, {per_job} run(s) per job", timed(spec, root / f"slurm{per_job}", "slurm", opts)))
    local = rows[0][1]
    print(f"{runs} x {seconds:g} s runs, 2 at a time (ideal {ideal:.1f} s); load "
          f"{os.getloadavg()[0]:.1f}:")
    for name, wall in rows:
        print(f"  {name:<26} {wall:6.1f} s  (over ideal {wall - ideal:5.1f} s; "
              f"vs local {100 * (wall - local) / local:+.1f}%)")


def driver_main(spec_path: str, out: str) -> None:
    """A driver process (killed by the fault benchmark)."""
    opts = SlurmOptions(time="10", poll_seconds=1)
    run_study(spec_path, out, "slurm", run_fn=sleep_run, slurm=opts)


def faults(runs: int, kills: int, cancels: int, root: Path) -> None:
    import yaml

    source = embedded_models()[0]["name"]
    spec_path = root / "faults.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "bench-faults", "sources": [{"model": source, "label": "s"}],
        "targets": ["digits"], "train_images": [100], "epochs": EPOCHS,
        "seeds": list(range(runs))}))
    out = root / "faults"
    env = {**os.environ, "RT_BENCH_SECONDS": "2"}
    cancelled: list[str] = []
    rng = random.Random(0)
    for kill in range(kills + 1):
        driver = subprocess.Popen([sys.executable, __file__, "--driver", str(spec_path), str(out)],
                                  env=env)
        if kill == kills:  # the last driver finishes the study
            assert driver.wait() == 0
            break
        deadline = time.monotonic() + rng.uniform(8, 16)
        while time.monotonic() < deadline and driver.poll() is None:
            if len(cancelled) < cancels * (kill + 1) / kills:
                cancelled += _cancel_running(out)
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    runs_df, epochs = load_results(out)
    recorded = epochs.groupby("run_id").size()
    executions = _executions(out)
    lost = runs - len(runs_df)
    twice = int((recorded > EPOCHS).sum())
    again = sum(1 for n in executions.values() if n > 1)
    print(f"faults: {runs} runs of 2 s, {kills} driver kills, {len(cancelled)} scancels "
          f"(jobs {', '.join(cancelled)}): {lost} lost, {twice} recorded twice, "
          f"{again} executed to the end twice")


def _cancel_running(out: Path) -> list[str]:
    path = out / "slurm" / "jobs.json"
    if not path.exists():
        return []
    for entry in JobTable(path).entries.values():
        state = subprocess.run(["squeue", "-h", "-j", entry.job_id, "-o", "%T"], capture_output=True,
                               text=True, check=False).stdout.strip()
        if state == "RUNNING":
            subprocess.run(["scancel", entry.job_id], check=False)
            return [entry.job_id]
    return []


def _executions(out: Path) -> dict[str, int]:
    from submitit.core.utils import pickle_load

    counts: dict[str, int] = {}
    for path in (out / "slurm" / "logs").glob("*/*_result.pkl"):
        kind, value = pickle_load(path)
        for run_id in value if kind == "success" else ():
            counts[run_id] = counts.get(run_id, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="runs of the overhead study")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--fault-runs", type=int, default=24)
    parser.add_argument("--parts", default="overhead,faults", help="overhead, faults or both")
    parser.add_argument("--driver", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        return driver_main(*args.driver)
    reason = cannot_run()
    if reason:
        sys.exit(f"cannot start SLURM here: {reason}")
    os.environ["RT_BENCH_SECONDS"] = str(args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalSlurm(Path(tmp) / "cluster")
        try:
            cluster.start()
            os.environ.update(cluster.env)
            if "overhead" in args.parts:
                overhead(args.runs, args.seconds, Path(tmp))
            if "faults" in args.parts:
                faults(args.fault_runs, 5, 3, Path(tmp))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
