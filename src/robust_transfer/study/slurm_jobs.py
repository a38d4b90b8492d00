"""SLURM settings, the driver's job table, and what SLURM says about jobs.

Light on purpose (no torch, no submitit): ``study status`` and the spec parser use it.
The executor itself is :mod:`robust_transfer.study.slurm`.

The study folder's ``slurm/`` subfolder holds everything of the SLURM executor:

* ``results/<run_id>.json``: a job's outcome of one run (result and per-epoch metrics),
  written whole by the job; the driver records it in the store and moves it to
  ``collected/``. Jobs never open ``study.db``.
* ``checkpoints/<run_id>.pt``: a run's training state after its last epoch, from which
  a requeued or resubmitted run resumes.
* ``logs/<job id>/``: submitit's folders (the pickled job, its stdout and stderr).
* ``jobs.json``: the driver's table of runs in flight (SLURM job id, attempt, log paths),
  written only by the driver, so a restarted driver knows which jobs are still its own.
* ``marker``: written by the driver; a job that does not see it runs on a node that does
  not share the study folder.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from robust_transfer.errors import ConfigError
from robust_transfer.io import atomic_write_text

SLURM_DIR = "slurm"
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED",
                           "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING",
                           "STAGE_OUT", "RESV_DEL_HOLD"})
COMMAND_TIMEOUT = 60.0  # seconds for one sbatch / squeue / scontrol call


@dataclass(frozen=True)
class SlurmOptions:
    """How a study's runs go to a SLURM cluster (spec ``slurm:``, ``study run --slurm-*``).

    Each field's metadata holds its command-line help.

    Attributes:
        partition: the partition (``None``: the cluster's default).
        time: each job's time limit, in a form ``sbatch --time`` takes (``30``,
            ``4:00:00``, ``1-12:00:00``).
        gpus_per_run: GPUs per job (``None``: the spec's ``resources.num_gpus``, rounded up).
        cpus_per_run: CPUs per job (``None``: the spec's ``resources.num_cpus``).
        mem: memory per job, as ``sbatch --mem`` takes it (``16G``); ``None``: the default.
        array_parallelism: jobs of one array running at a time at most.
        account: the account to charge (``None``: the user's default).
        sbatch_args: further ``sbatch`` options, each ``--name=value`` or ``--flag``.
        runs_per_job: runs one job executes one after the other (more amortises the start
            of a job over short runs).
        retries: times a run whose job died (``scancel``, node failure, time limit, out of
            memory) is resubmitted before it is recorded failed.
        requeues: times a job that timed out is requeued from its checkpoint (submitit's
            ``max_num_timeout``; preemptions do not count).
        poll_seconds: how often the driver asks ``squeue`` about its jobs (results are
            looked for every half second).
    """

    partition: str | None = field(default=None, metadata={"help": "SLURM partition (default: the cluster's)"})
    time: str = field(default="60", metadata={
        "help": "time limit per job as sbatch --time takes it, e.g. 30, 4:00:00, 1-12:00:00"})
    gpus_per_run: int | None = field(default=None, metadata={
        "help": "GPUs per job (default: the spec's resources.num_gpus, rounded up)"})
    cpus_per_run: int | None = field(default=None, metadata={
        "help": "CPUs per job (default: the spec's resources.num_cpus)"})
    mem: str | None = field(default=None, metadata={"help": "memory per job, e.g. 16G (sbatch --mem)"})
    array_parallelism: int = field(default=64, metadata={"help": "jobs of an array running at once at most"})
    account: str | None = field(default=None, metadata={"help": "account to charge (sbatch --account)"})
    sbatch_args: tuple[str, ...] = field(default=(), metadata={
        "help": "more sbatch options, e.g. --qos=high --constraint=a100"})
    runs_per_job: int = field(default=1, metadata={"help": "runs per job, one after the other"})
    retries: int = field(default=2, metadata={
        "help": "resubmissions of a run whose job died (scancel, node failure, time limit)"})
    requeues: int = field(default=3, metadata={"help": "requeues of a timed-out job from its checkpoint"})
    poll_seconds: float = field(default=10.0, metadata={"help": "seconds between squeue calls"})

    def __post_init__(self) -> None:
        for name in ("array_parallelism", "runs_per_job"):
            if getattr(self, name) < 1:
                raise ConfigError(f"slurm {name} must be >= 1, got {getattr(self, name)}")
        for name in ("retries", "requeues", "gpus_per_run", "cpus_per_run"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"slurm {name} must be >= 0, got {value}")
        if not self.poll_seconds > 0:
            raise ConfigError(f"slurm poll_seconds must be > 0, got {self.poll_seconds}")
        for arg in self.sbatch_args:
            if not arg.startswith("--"):
                raise ConfigError(f"slurm sbatch_args: '{arg}' is not an sbatch option; write "
                                  "each as --name=value or --flag")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sbatch_flags(self, cpus: int, gpus: int) -> list[str]:
        """These settings as ``sbatch`` options (the ones :func:`check_slurm` tests)."""
        flags = [f"--time={self.time}", f"--cpus-per-task={cpus}"]
        flags += [f"--partition={self.partition}"] if self.partition else []
        flags += [f"--gpus-per-node={gpus}"] if gpus else []
        flags += [f"--mem={self.mem}"] if self.mem else []
        flags += [f"--account={self.account}"] if self.account else []
        return flags + list(self.sbatch_args)


SLURM_KEYS = tuple(f.name for f in fields(SlurmOptions))


def slurm_options(data: dict[str, Any]) -> SlurmOptions:
    """Options from a spec's ``slurm:`` mapping (values as YAML reads them).

    Raises:
        ConfigError: unknown keys (the valid ones listed) or bad values.
    """
    unknown = [k for k in data if k not in SLURM_KEYS]
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}' in slurm; valid: {', '.join(SLURM_KEYS)}")
    values: dict[str, Any] = {}
    for f in fields(SlurmOptions):
        if f.name not in data or data[f.name] is None:
            continue
        value = data[f.name]
        try:
            if f.name == "sbatch_args":
                value = tuple(str(a) for a in (value.split() if isinstance(value, str) else value))
            elif f.name == "poll_seconds":
                value = float(value)
            elif f.name in ("partition", "time", "mem", "account"):
                value = str(value)
            elif isinstance(value, bool) or int(value) != value:
                raise TypeError(f.name)
            else:
                value = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"slurm {f.name}: bad value {data[f.name]!r}") from None
        values[f.name] = value
    return SlurmOptions(**values)


def time_minutes(text: str) -> int:
    """Minutes (rounded up) of a SLURM time limit: ``M``, ``M:S``, ``H:M:S``, ``D-H``,
    ``D-H:M``, ``D-H:M:S``.

    Raises:
        ConfigError: not one of those forms.
    """
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ConfigError(f"slurm time '{text}' is not a SLURM time limit (minutes, H:M:S or D-H:M:S)")
    days, first, *rest = match.groups()
    a, (b, c) = int(first), (int(g or 0) for g in rest)
    if days is not None:  # D-H, D-H:M, D-H:M:S
        seconds = int(days) * 86400 + a * 3600 + b * 60 + c
    elif rest[1] is not None:  # H:M:S
        seconds = a * 3600 + b * 60 + c
    else:  # M or M:S
        seconds = a * 60 + b
    return max(1, math.ceil(seconds / 60))


# --- talking to SLURM ----------------------------------------------------------------
def _slurm(args: list[str], timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ConfigError(f"the slurm executor needs SLURM's '{args[0]}' on PATH; run on a "
                          "SLURM login node (or use --executor local or ray)") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"the SLURM controller does not answer ('{args[0]}' took over "
                          f"{timeout:.0f}s); check `scontrol ping`") from None


def slurm_message(stderr: str) -> str:
    """SLURM's error text on one line, without the ``sbatch: error:`` prefixes."""
    lines = [re.sub(r"^\w+: error: ", "", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line and not line.startswith("*")]  # banners
    return "; ".join(dict.fromkeys(lines))[:300] or "no message"


def check_slurm(options: SlurmOptions, cpus: int, gpus: int) -> None:
    """Refuse, before anything is submitted, settings or a cluster SLURM would refuse.

    Asks the controller (``scontrol ping``), then has SLURM judge the job settings
    without submitting anything (``sbatch --test-only``): an unknown partition, GPUs
    on a partition without them, a malformed time limit, a bad account.

    Raises:
        ConfigError: one line: SLURM's own message, shortened, and what to do.
    """
    for tool in ("sbatch", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            raise ConfigError(f"the slurm executor needs SLURM's '{tool}' on PATH; run on a SLURM "
                              "login node (or use --executor local or ray)")
    ping = _slurm(["scontrol", "ping"], timeout=30)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        said = slurm_message(ping.stderr or ping.stdout)
        raise ConfigError(f"the SLURM controller does not answer ({said}); check `scontrol ping` "
                          "and SLURM_CONF")
    test = _slurm(["sbatch", "--test-only", *options.sbatch_flags(cpus, gpus), "--wrap=true"])
    if test.returncode != 0:
        said = slurm_message(test.stderr)
        hint = ""
        if gpus and "gres" in said.lower():
            hint = (f" (GPUs asked for: does partition {options.partition or '(default)'} have "
                    "any? `sinfo -o '%P %G'` lists them)")
        raise ConfigError(f"SLURM refuses these job settings: {said}{hint}; fix the spec's slurm: "
                          "section or the --slurm-* options")
    time_minutes(options.time)  # SLURM took it: any form it takes parses here


def max_array_size(default: int = 1001) -> int:
    """The cluster's ``MaxArraySize`` (an array holds at most this many jobs minus one)."""
    out = _slurm(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
    return int(match.group(1)) if match else default


def job_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """``job id -> (state, node list)`` as ``squeue`` reports them (array tasks one each).

    Jobs SLURM no longer lists (ended more than ``MinJobAge`` ago) are absent. ``sacct``
    would know them, but it needs accounting storage, which many small clusters lack.
    """
    if not job_ids:
        return {}
    out = _slurm(["squeue", "--noheader", "--array", "--me", "--states=all",
                  "--format=%i|%T|%N"])
    if out.returncode != 0:
        raise ConfigError(f"squeue failed: {slurm_message(out.stderr)}")
    wanted, states = set(job_ids), {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in wanted:
            states[parts[0]] = (parts[1], parts[2])
    return states


# --- the driver's job table ----------------------------------------------------------
@dataclass
class JobEntry:
    """A run's SLURM job as the driver knows it.

    Attributes:
        job_id: SLURM's id (``123_4`` for an array task).
        attempt: submissions of this run so far (1 = the first).
        stdout, stderr: the job's log files.
        result_pickle: submitit's record of how the job function ended.
        runs: the run ids the job executes.
    """

    job_id: str
    attempt: int
    stdout: str
    stderr: str
    result_pickle: str
    runs: list[str]


class JobTable:
    """``run_id -> JobEntry``, kept in ``slurm/jobs.json``, written whole by the driver."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, JobEntry] = {}
        if path.exists():
            raw = json.loads(path.read_text(encoding="utf-8"))
            self.entries = {run: JobEntry(**e) for run, e in raw.items()}

    def save(self) -> None:
        data = {run: asdict(e) for run, e in self.entries.items()}
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True), fsync=True)


@dataclass(frozen=True)
class JobStatus:
    """A run's job for ``study status``: SLURM id, state (``unknown`` when SLURM cannot be
    asked or no longer lists it), node, log file."""

    run_id: str
    job_id: str
    state: str
    node: str
    log: str
    attempt: int


def slurm_jobs(study_dir: str | os.PathLike) -> list[JobStatus]:
    """The study's SLURM jobs not yet collected by a driver, with what ``squeue`` says.

    Returns:
        One entry per run in flight (empty when the study never used SLURM).
    """
    path = Path(study_dir) / SLURM_DIR / "jobs.json"
    if not path.exists():
        return []
    table = JobTable(path)
    try:
        states = job_states(sorted({e.job_id for e in table.entries.values()}))
    except ConfigError:  # no SLURM here (status read on another machine)
        states = {}
    return [JobStatus(run, e.job_id, *states.get(e.job_id, ("unknown", "")), e.stderr, e.attempt)
            for run, e in sorted(table.entries.items(), key=lambda kv: kv[1].job_id)]
