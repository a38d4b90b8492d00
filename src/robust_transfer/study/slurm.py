"""The ``slurm`` executor: runs as SLURM job arrays through submitit; the driver alone
writes the store.

Each job runs one run (or ``runs_per_job`` short ones) through the same worker code as
the other executors (:func:`~robust_transfer.study.worker.execute_run`) and writes each
outcome, result and per-epoch metrics, as one file, atomically (``slurm/results/``;
layout in :mod:`.slurm_jobs`). The driver collects those files as they appear and
records them in the store, one transaction each; it asks ``squeue`` about the jobs it
submitted, kept in ``slurm/jobs.json``.

Faults:

* a job that ends without writing its runs' results (``scancel``, node failure, time
  limit, out of memory) has those runs resubmitted, up to ``retries`` times, then
  recorded failed with the job id and log path;
* on preemption or time-out SLURM signals the job (``--signal=USR2@...``) and submitit
  requeues it (:class:`SlurmRunJob` is ``Checkpointable``); every run saves its training
  state (weights, optimiser, schedule, RNG, epoch) after each epoch, so the requeued or
  resubmitted run resumes after its last finished epoch and ends as an uninterrupted one;
* a run that raises is recorded failed (with its traceback and the job's log path); a
  job whose own code failed records that error for its runs; neither touches other runs;
* a restarted driver collects the results already written, waits for the jobs still
  queued or running, and resubmits only the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError

from robust_transfer.errors import ConfigError
from robust_transfer.io import atomic_write_text
from robust_transfer.study.slurm_jobs import (
    ACTIVE_STATES,
    SLURM_DIR,
    JobEntry,
    JobTable,
    SlurmOptions,
    job_states,
    max_array_size,
    slurm_message,
    time_minutes,
)
from robust_transfer.study.store import RunOutcome
from robust_transfer.study.worker import RunContext, RunTask

RESULT_POLL_SECONDS = 0.5
JOB_NAME = "robust-transfer"


class NotSharedError(RuntimeError):
    """The job cannot see the driver's marker file: the study folder is not shared."""


# --- job side ------------------------------------------------------------------------
class SlurmRunJob(submitit.helpers.Checkpointable):
    """What a SLURM job executes: its runs, one after the other, each outcome to a file.

    ``Checkpointable``: when SLURM signals a preemption or time-out, submitit pickles this
    call again and requeues the job; the rerun skips runs whose result is written and
    resumes the interrupted one from its epoch checkpoint (``ctx.checkpoint_dir``).
    """

    def __call__(self, tasks: list[RunTask], ctx: RunContext, run_fn, slurm_dir: str) -> list[str]:
        folder = Path(slurm_dir)
        if not (folder / "marker").exists():
            raise NotSharedError(f"{folder / 'marker'} (written by the driver) is not visible on "
                                 f"node {socket.gethostname()}: the study folder is not on a "
                                 "filesystem the nodes share")
        for task in tasks:
            result = folder / "results" / f"{task.run_id}.json"
            if result.exists():
                continue
            outcome = run_fn(task, ctx)
            atomic_write_text(result, json.dumps(dataclasses.asdict(outcome)), fsync=True)
            checkpoint = ctx.checkpoint(task.run_id)
            if checkpoint and os.path.exists(checkpoint):
                os.unlink(checkpoint)  # the result is safe: its training state is not needed
        return [t.run_id for t in tasks]


def read_outcome(path: Path) -> RunOutcome:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["history"] = tuple(data.get("history") or ())
    return RunOutcome(**data)


# --- driver side ---------------------------------------------------------------------
class _Folder:
    """The ``slurm/`` subfolder of a study (see :mod:`.slurm_jobs`)."""

    def __init__(self, study_dir: str) -> None:
        self.root = Path(study_dir).resolve() / SLURM_DIR
        self.results, self.collected = self.root / "results", self.root / "collected"
        self.checkpoints, self.logs = self.root / "checkpoints", self.root / "logs"
        for sub in (self.results, self.collected, self.checkpoints, self.logs):
            sub.mkdir(parents=True, exist_ok=True)
        marker = self.root / "marker"
        if not marker.exists():
            atomic_write_text(marker, uuid.uuid4().hex, fsync=True)

    def result(self, run_id: str) -> Path:
        return self.results / f"{run_id}.json"

    def collect(self, run_id: str) -> None:
        """The outcome is in the store: keep its file aside (never collected twice)."""
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.result(run_id), self.collected / f"{run_id}.json")


def slurm_executor(tasks: list[RunTask], ctx: RunContext, on_start, options) -> Iterator[RunOutcome]:
    """Runs ``tasks`` as SLURM jobs; yields each outcome as its result file appears."""
    if options.study_dir is None:
        raise ConfigError("the slurm executor needs the study folder (run it through run_study)")
    driver = _Driver(tasks, ctx, on_start, options)
    yield from driver.run()


class _Driver:
    """One driver session: submit, watch, collect, resubmit."""

    def __init__(self, tasks: list[RunTask], ctx: RunContext, on_start, options) -> None:
        self.opts: SlurmOptions = options.slurm
        self.folder = _Folder(options.study_dir)
        self.ctx = dataclasses.replace(ctx, checkpoint_dir=str(self.folder.checkpoints))
        self.on_start, self.run_fn = on_start, options.run_fn
        self.cpus = self.opts.cpus_per_run or options.resources.threads
        self.gpus = (self.opts.gpus_per_run if self.opts.gpus_per_run is not None
                     else math.ceil(options.resources.num_gpus))
        self.table = JobTable(self.folder.root / "jobs.json")
        self.pending = {t.run_id: t for t in tasks}
        self._forget_recorded()
        self.states: dict[str, tuple[str, str]] = {}
        self.last_poll = -math.inf  # the first round asks squeue at once
        self.array_limit = max(1, max_array_size() - 1)

    def _forget_recorded(self) -> None:
        """Drop entries of runs a killed driver recorded (and set aside) but had not yet
        removed from the table."""
        stale = [run for run in self.table.entries if run not in self.pending
                 and (self.folder.collected / f"{run}.json").exists()]
        for run in stale:
            del self.table.entries[run]
        if stale:
            self.table.save()

    def run(self) -> Iterator[RunOutcome]:
        first = True
        while self.pending:
            yield from self._collect()
            if not self.pending:
                break
            if time.monotonic() - self.last_poll >= self.opts.poll_seconds:
                self._poll()
                if first:  # jobs a previous driver submitted that are still queued or running
                    self._mark_resumed()
                    first = False
                yield from self._collect()  # what ended before the states were read
                yield from self._resubmit()
            time.sleep(RESULT_POLL_SECONDS)

    def _poll(self) -> None:
        self.states = job_states(sorted({self.table.entries[r].job_id for r in self.pending
                                         if r in self.table.entries}))
        self.last_poll = time.monotonic()

    def _mark_resumed(self) -> None:
        resumed = [run for run in self.pending if run in self.table.entries and
                   self.states.get(self.table.entries[run].job_id, ("", ""))[0] in ACTIVE_STATES]
        if resumed:
            self.on_start(resumed)

    def _collect(self) -> Iterator[RunOutcome]:
        for run_id in [r for r in self.pending if self.folder.result(r).exists()]:
            outcome = read_outcome(self.folder.result(run_id))
            entry = self.table.entries.get(run_id)
            if outcome.status == "failed" and entry is not None:
                outcome = dataclasses.replace(outcome, error=f"{outcome.error}\n{_where(entry)}")
            yield outcome  # the driver records it before asking for the next one
            self._done(run_id)

    def _done(self, run_id: str) -> None:
        self.pending.pop(run_id, None)
        self.folder.collect(run_id)
        if self.table.entries.pop(run_id, None) is not None:
            self.table.save()

    def _resubmit(self) -> Iterator[RunOutcome]:
        """Submit runs that have no live job; fail those out of retries."""
        todo = []
        for run_id in list(self.pending):
            entry = self.table.entries.get(run_id)
            if entry is None:
                todo.append(self.pending[run_id])
                continue
            state, node = self.states.get(entry.job_id, ("", ""))
            if state in ACTIVE_STATES:
                continue
            failure = self._job_failure(entry, state, node)
            if failure is not None or entry.attempt > self.opts.retries:
                yield self._failed(run_id, entry, failure or
                                   f"SLURM job {entry.job_id} ended without a result "
                                   f"({state or 'no longer listed'}) {entry.attempt} time(s)")
                self._done(run_id)
            else:
                todo.append(self.pending[run_id])
        if todo:
            self._submit(todo)

    def _job_failure(self, entry: JobEntry, state: str, node: str) -> str | None:
        """Why the job's own code failed (not a kill), from submitit's record; else None.

        Raises:
            ConfigError: the job ran but neither its log nor its result reached the
                study folder: the nodes do not share it.
        """
        ran = state in ("COMPLETED", "FAILED")
        if ran and not os.path.exists(entry.stdout) and not os.path.exists(entry.stderr):
            raise ConfigError(
                f"the study folder {self.folder.root.parent} is not on a filesystem the SLURM "
                f"nodes share: job {entry.job_id} ran on {node or 'a node'} but its log and result "
                f"never appeared here (nor did it see the marker {self.folder.root / 'marker'}); "
                "use an --out on a shared filesystem")
        if not os.path.exists(entry.result_pickle):
            return None
        try:
            kind, value = submitit.core.utils.pickle_load(entry.result_pickle)
        except Exception:  # a half-written pickle from a killed job: treat as a kill
            return None
        if kind != "error":
            return None
        if "NotSharedError" in str(value):
            raise ConfigError(str(value).strip().splitlines()[-1].split(": ", 1)[-1]
                              + "; use an --out on a shared filesystem")
        last = str(value).strip().splitlines()[-1] if str(value).strip() else "error"
        return f"SLURM job {entry.job_id} failed: {last}"

    def _failed(self, run_id: str, entry: JobEntry, why: str) -> RunOutcome:
        now = time.time()
        return RunOutcome(run_id, "failed", now, now, device=self.ctx.device,
                          error=f"{why}; log: {entry.stderr}; --retry-failed resubmits it\n"
                                f"{_where(entry)}")

    def _submit(self, tasks: list[RunTask]) -> None:
        size = self.opts.runs_per_job
        chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
        executor = self._executor()
        for start in range(0, len(chunks), self.array_limit):
            part = chunks[start:start + self.array_limit]
            try:
                with executor.batch():
                    for chunk in part:
                        executor.submit(SlurmRunJob(), chunk, self.ctx, self.run_fn,
                                        str(self.folder.root))
            except FailedJobError as err:
                raise ConfigError(f"sbatch refused the jobs: {slurm_message(str(err))}") from None

    def _executor(self):
        executor = _RecordingExecutor(self, folder=self.folder.logs / "%j",
                                      max_num_timeout=self.opts.requeues)
        minutes = time_minutes(self.opts.time)
        extra: dict[str, str | bool] = {}
        for arg in self.opts.sbatch_args:
            name, eq, value = arg[2:].partition("=")
            extra[name.replace("-", "_")] = value if eq else True
        params: dict[str, object] = {"time": minutes, "cpus_per_task": self.cpus, "job_name": JOB_NAME,
                  "array_parallelism": self.opts.array_parallelism,
                  # the checkpoint signal: 90 s before the limit, or a third of a short one
                  "signal_delay_s": min(90, max(10, minutes * 20)),
                  "additional_parameters": extra}
        for key, setting in (("partition", self.opts.partition), ("mem", self.opts.mem),
                             ("account", self.opts.account)):
            if setting:
                params[key] = setting
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        executor.update_parameters(**params)
        return executor


class _RecordingExecutor(submitit.SlurmExecutor):
    """submitit's executor, noting each submitted job in the driver's table at once."""

    def __init__(self, driver: _Driver, **kwargs) -> None:
        super().__init__(**kwargs)
        self.driver = driver

    def _internal_process_submissions(self, delayed_submissions):
        jobs = super()._internal_process_submissions(delayed_submissions)
        driver = self.driver
        for job, delayed in zip(jobs, delayed_submissions, strict=True):
            runs = [t.run_id for t in delayed.args[0]]
            for run_id in runs:
                old = driver.table.entries.get(run_id)
                driver.table.entries[run_id] = JobEntry(
                    job.job_id, (old.attempt + 1) if old else 1, str(job.paths.stdout),
                    str(job.paths.stderr), str(job.paths.result_pickle), runs)
        driver.table.save()  # before anything else: a killed driver still knows these jobs
        driver.on_start([t.run_id for d in delayed_submissions for t in d.args[0]])
        return jobs


def _where(entry: JobEntry) -> str:
    return f"SLURM job {entry.job_id} (attempt {entry.attempt}), log {entry.stderr}"

