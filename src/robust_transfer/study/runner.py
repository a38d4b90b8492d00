"""Run a study: check it, plan it into the store, execute what is left, record each outcome.

The driver is the only writer of the store. Before any run starts it checks the spec
against this machine (:mod:`.resolve`) and against the directory (a different study is
refused unless ``extend``); then it plans every run as ``pending`` and hands the
unfinished ones to an executor, recording each outcome in one transaction as it arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from robust_transfer.engine.training import require_device
from robust_transfer.errors import ConfigError, RobustTransferError
from robust_transfer.io import atomic_write_text
from robust_transfer.study.cache_budget import check_cache_budget
from robust_transfer.study.executors import ExecutorOptions, get_executor
from robust_transfer.study.lock import DriverLock
from robust_transfer.study.machine import check_resources
from robust_transfer.study.resolve import ResolvedStudy, resolve_study
from robust_transfer.study.slurm_jobs import SlurmOptions
from robust_transfer.study.spec import RunConfig, StudySpec, load_spec, run_set_id
from robust_transfer.study.store import RunOutcome, StudyStore, run_row
from robust_transfer.study.worker import RunContext, RunTask

FEATURE_CACHE_DIR = "feature_cache"
SPEC_COPY = "spec.yaml"


@dataclass(frozen=True)
class StudyProgress:
    """A snapshot of a running study, for progress displays
    (:meth:`robust_transfer.progress.Progress.study` shows it).

    Attributes:
        done, failed, running, remaining: runs of this invocation by state.
        total: runs this invocation set out to do.
        elapsed: seconds since it started.
        eta: estimated seconds left (``None`` until a run has ended).
        last: the outcome that triggered this snapshot, if any.
    """

    done: int
    failed: int
    running: int
    remaining: int
    total: int
    elapsed: float
    eta: float | None
    last: RunOutcome | None = None


@dataclass(frozen=True)
class StudySummary:
    """What :func:`run_study` did and where the study stands.

    Attributes:
        study_dir: the study directory.
        total_runs: runs this spec defines.
        skipped: runs already finished before (or failed, without ``retry_failed``).
        ran, finished, failed: runs executed now and how they ended.
        seconds: wall time of this invocation.
        store_finished, store_failed, store_total: the whole store afterwards.
        failures: ``(run_id, first line of the error)`` of runs that failed now.
    """

    study_dir: Path
    total_runs: int
    skipped: int
    ran: int
    finished: int
    failed: int
    seconds: float
    store_finished: int
    store_failed: int
    store_total: int
    failures: tuple[tuple[str, str], ...] = ()


ProgressCallback = Callable[[StudyProgress], None]


def run_study(spec: StudySpec | str | Path, out_dir: str | Path, executor: str | None = None, *,
              workers: int | None = 1, ray_address: str | None = None,
              retry_failed: bool = False, extend: bool = False, data_root: str | None = None,
              device: str | None = None, feature_cache: bool | None = None,
              num_cpus: float | None = None, num_gpus: float | None = None,
              progress: ProgressCallback | None = None, run_fn=None,
              slurm: SlurmOptions | None = None,
              device_budget: int | None = None, oversubscribe: bool = False) -> StudySummary:
    """Run every unfinished run of a study, resumably.

    Args:
        spec: a :class:`StudySpec` or the path of a YAML spec.
        out_dir: the study directory (created if absent).
        executor: ``"local"``, ``"ray"`` or ``"slurm"`` (default: the spec's, else local).
        workers: runs at a time (local: processes; 1 = in this process).
        ray_address: join this Ray cluster instead of starting one.
        retry_failed: rerun runs that failed before.
        extend: allow a spec other than the one(s) stored in ``out_dir``.
        data_root, device, feature_cache, num_cpus, num_gpus, device_budget: override
            the spec's (``device_budget``: bytes of a run's data kept on its GPU).
        progress: called after each run (and once at the start).
        run_fn: replaces :func:`~.worker.execute_run` (benchmarks, tests); module-level.
        slurm: the SLURM executor's settings (default: the spec's ``slurm:``).
        oversubscribe: allow runs to ask for more cores (or GPUs) than this machine has
            (:func:`~.machine.check_resources`).

    Returns:
        A :class:`StudySummary`.

    Raises:
        RobustTransferError: bad spec, missing inputs (nothing is run), more cores or
            GPUs than this machine has, a different study in ``out_dir``, another process running it, or an executor that cannot
            start. Failing runs are recorded, not raised.
    """
    spec = _override(_as_spec(spec), device, feature_cache, num_cpus, num_gpus, data_root,
                     device_budget)
    executor = executor or spec.executor
    if executor == "local" or (executor == "ray" and ray_address is None):  # runs on this machine
        require_device(spec.device)
        check_gpu_shares(spec.resources.num_gpus, workers, spec.device)
        check_resources(spec.resources.num_cpus, spec.resources.num_gpus if executor == "ray"
                        else 0.0, workers, oversubscribe=oversubscribe)
    resolved = resolve_study(spec, data_root)
    resolved.require_complete()
    out = Path(out_dir)
    options = ExecutorOptions(workers, spec.resources, ray_address, slurm=slurm or spec.slurm,
                              study_dir=str(out))
    if run_fn is not None:
        options.run_fn = run_fn
    runner = get_executor(executor, options)  # fails before the directory is touched
    if spec.feature_cache:  # a cache that cannot fit is refused before any run starts
        check_cache_budget(resolved, out / FEATURE_CACHE_DIR, spec.feature_cache_budget)
    with DriverLock(out), StudyStore(out, create=True) as store:
        runs, todo, skipped = _prepare(store, resolved, extend, retry_failed)
        ctx = _context(resolved, out, workers if executor == "local" else None)
        start = time.perf_counter()
        ran = _execute(store, runner, todo, ctx, options, progress)
        status = store.status()
        return StudySummary(out, len(runs), skipped, len(ran), sum(o.status == "finished" for o in ran),
                            sum(o.status == "failed" for o in ran), time.perf_counter() - start,
                            status.finished, status.failed, status.total,
                            tuple((o.run_id, (o.error or "").splitlines()[0]) for o in ran
                                  if o.status == "failed"))


def check_gpu_shares(num_gpus: float, workers: int | None, device: str,
                     gpus_present: int | None = None) -> None:
    """Refuse GPU shares that add up to more than the GPUs on this machine.

    A run reserves ``num_gpus`` of a GPU (its memory share: see
    :func:`robust_transfer.data.loader.device_budget`); ``workers`` runs at a time reserve
    ``workers * num_gpus``. Ray would wait forever for a task that needs more GPUs than
    exist, and local worker processes would overfill the devices.

    Raises:
        ConfigError: one run's share, or all concurrent runs' shares, exceed the GPUs here.
    """
    import torch

    if num_gpus <= 0 or not _uses_cuda(device):
        return
    present = torch.cuda.device_count() if gpus_present is None else gpus_present
    if num_gpus > present:
        raise ConfigError(f"each run asks for num_gpus {num_gpus:g} but this machine has "
                          f"{present} GPU(s); use num_gpus <= {present} (a fraction shares a GPU)")
    if workers and workers * num_gpus > present:
        raise ConfigError(f"{workers} runs at a time x num_gpus {num_gpus:g} = "
                          f"{workers * num_gpus:g} GPUs, more than the {present} GPU(s) here; "
                          f"use --workers {max(1, int(present / num_gpus))} or a smaller num_gpus")


def _uses_cuda(device: str) -> bool:
    import torch

    return str(device).startswith("cuda") or (str(device) == "auto" and torch.cuda.is_available())


def _as_spec(spec: StudySpec | str | Path) -> StudySpec:
    return spec if isinstance(spec, StudySpec) else load_spec(spec)


def _override(spec: StudySpec, device, feature_cache, num_cpus, num_gpus, data_root,
              device_budget) -> StudySpec:
    res = replace(spec.resources, **{k: float(v) for k, v in
                                     (("num_cpus", num_cpus), ("num_gpus", num_gpus)) if v is not None})
    changes: dict[str, Any] = {"resources": res}
    for key, value in (("device", device), ("feature_cache", feature_cache), ("data_root", data_root),
                       ("device_budget", device_budget)):
        if value is not None:
            changes[key] = value
    return replace(spec, **changes)


def _prepare(store: StudyStore, resolved: ResolvedStudy, extend: bool,
             retry_failed: bool) -> tuple[list[RunConfig], list[RunTask], int]:
    """Check the directory's study, plan the runs, and list the ones to execute."""
    spec = resolved.spec
    runs = spec.runs()
    spec_id = check_spec(store, spec, [r.run_id for r in runs], extend)
    store.pin_sources([s.to_dict() for s in resolved.sources.values()])
    sources = {label: s.to_dict() for label, s in resolved.sources.items()}
    store.plan((run_row(r.to_dict(), sources[r.source]) for r in runs), spec_id)
    store.reset_running()  # we hold the driver lock: no one else is running them
    _write_spec_copy(store.dir, spec)
    statuses = store.statuses(r.run_id for r in runs)
    redo = {"pending", "running"} | ({"failed"} if retry_failed else set())
    todo = [RunTask(r.run_id, r) for r in runs if statuses.get(r.run_id) in redo]
    return runs, todo, len(runs) - len(todo)


def check_spec(store: StudyStore, spec: StudySpec, run_ids: list[str], extend: bool) -> int:
    """The stored spec matching these runs, else store this one if allowed.

    Two specs are the same study when they define the same set of runs: comments, key
    order and execution settings do not matter.

    Raises:
        RobustTransferError: the directory holds a different study and ``extend`` is off.
    """
    run_set = run_set_id(run_ids)
    stored = store.specs()
    same = next((s for s in stored if s["run_set"] == run_set), None)
    if same is not None:
        return int(same["spec_id"])
    if stored and not extend:
        first = stored[0]
        raise RobustTransferError(
            f"{store.dir} holds a different study ('{first['name']}', {first['n_runs']} runs; "
            f"this spec defines {len(run_ids)} runs, not the same ones): choose another --out, "
            "or pass --extend to add this spec's runs to it")
    return store.add_spec(run_set, len(run_ids), spec.name, spec.text)


def _write_spec_copy(study_dir: Path, spec: StudySpec) -> None:
    """The first spec also sits beside the store as ``spec.yaml``, for people and tools."""
    copy = study_dir / SPEC_COPY
    if not copy.exists():
        atomic_write_text(copy, spec.text)


def _context(resolved: ResolvedStudy, out: Path, local_workers: int | None = None) -> RunContext:
    spec = resolved.spec
    cache = str(out / FEATURE_CACHE_DIR) if spec.feature_cache else None
    return RunContext(dict(resolved.records), str(resolved.data_root), spec.device,
                      spec.resources.threads, cache, spec.feature_cache_budget,
                      gpu_share(spec.resources.num_gpus, local_workers), spec.device_budget)


def gpu_share(num_gpus: float, local_workers: int | None = None) -> float:
    """The fraction of a GPU one run holds: ``num_gpus`` below 1, else what local runs split.

    Ray places runs by ``num_gpus``; local worker processes all use the same device, so
    ``workers`` of them share it equally.
    """
    if 0 < num_gpus < 1:
        return num_gpus
    if local_workers and local_workers > 1:
        return 1.0 / local_workers
    return 1.0


def _execute(store: StudyStore, runner, todo: list[RunTask], ctx: RunContext,
             options: ExecutorOptions, progress: ProgressCallback | None) -> list[RunOutcome]:
    tracker = _Tracker(len(todo), progress)
    tracker.report(None)

    def on_start(run_ids: list[str]) -> None:
        store.mark_running(run_ids)
        tracker.started(len(run_ids))

    outcomes = []
    for outcome in runner(todo, ctx, on_start, options):
        store.record(outcome)  # one transaction per run: all of it or nothing
        outcomes.append(outcome)
        tracker.ended(outcome)
    return outcomes


class _Tracker:
    """Counts runs by state and estimates the time left."""

    def __init__(self, total: int, callback: ProgressCallback | None) -> None:
        self.total, self.callback = total, callback
        self.done = self.failed = self.running = 0
        self.start = time.perf_counter()

    def started(self, count: int) -> None:
        self.running += count
        self.report(None)

    def ended(self, outcome: RunOutcome) -> None:
        self.running = max(0, self.running - 1)
        if outcome.status == "finished":
            self.done += 1
        else:
            self.failed += 1
        self.report(outcome)

    def report(self, last: RunOutcome | None) -> None:
        if self.callback is None:
            return
        ended = self.done + self.failed
        elapsed = time.perf_counter() - self.start
        remaining = self.total - ended - self.running
        # runs end at the rate seen so far; the ones running are half done on average
        eta = elapsed / ended * (remaining + self.running / 2) if ended else None
        self.callback(StudyProgress(self.done, self.failed, self.running, remaining,
                                    self.total, elapsed, eta, last))

