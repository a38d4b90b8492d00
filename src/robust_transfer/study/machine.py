"""What this machine has, and the check that a study asks for no more of it.

A run reserves ``num_cpus`` CPU threads and ``num_gpus`` GPUs (:class:`~.spec.Resources`);
``workers`` runs go at a time. Asking for more cores than exist does not fail: torch runs
the threads anyway, far slower (1,000 threads per run on 2 cores: 16x), and a thread count
in the hundred thousands crashes the process. So a study that asks for more than the
machine has is refused before anything runs, unless oversubscription is asked for on
purpose (``--oversubscribe``); even then a run gets at most :data:`MAX_THREADS_PER_CORE`
threads per core.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from robust_transfer.errors import ConfigError

MAX_THREADS_PER_CORE = 8  # beyond this even --oversubscribe is refused: it only thrashes


@dataclass(frozen=True)
class Machine:
    """The CPU cores this process may use and the CUDA GPUs torch sees."""

    cores: int
    gpus: int


def this_machine() -> Machine:
    """The cores this process may run on (its CPU affinity) and the visible GPUs."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Machine(max(1, cores), gpus)


def check_resources(num_cpus: float, num_gpus: float, workers: int | None, *,
                    oversubscribe: bool = False, machine: Machine | None = None) -> None:
    """Refuse a study asking this machine for more cores or GPUs than it has.

    Args:
        num_cpus, num_gpus: what one run reserves.
        workers: runs at a time (``None`` or 1: one).
        oversubscribe: allow more threads than cores (up to :data:`MAX_THREADS_PER_CORE`
            per core) and more runs than GPUs, on purpose.
        machine: default :func:`this_machine`.

    Raises:
        ConfigError: what was asked, what the machine has, and what to pass instead.
    """
    have = machine or this_machine()
    runs = max(1, workers or 1)
    fix = "--cpus-per-run or the spec's resources: num_cpus"
    if num_cpus > have.cores * MAX_THREADS_PER_CORE:
        raise ConfigError(f"num_cpus {num_cpus:g} per run is more than {MAX_THREADS_PER_CORE} "
                          f"threads per core of this machine's {have.cores} core(s), even "
                          f"oversubscribed; use at most {have.cores} ({fix})")
    if not oversubscribe and num_cpus * runs > have.cores:
        asked = f"{num_cpus:g} CPU(s) per run" + (f" x {runs} runs at a time" if runs > 1 else "")
        most = max(1, have.cores // runs)
        raise ConfigError(f"{asked} is more than this machine's {have.cores} core(s), so runs "
                          f"would share cores and run slower; use at most {most} per run "
                          f"({fix}) or fewer --workers, or pass --oversubscribe to do it on "
                          "purpose")
    if num_gpus > 0:
        _check_gpus(num_gpus, runs, have.gpus, oversubscribe)


def _check_gpus(num_gpus: float, runs: int, gpus: int, oversubscribe: bool) -> None:
    if gpus == 0:
        raise ConfigError(f"num_gpus {num_gpus:g} per run, but torch sees no CUDA GPU here; "
                          "use --gpus-per-run 0 (or the spec's resources: num_gpus: 0)")
    if math.ceil(num_gpus) > gpus or (not oversubscribe and num_gpus * runs > gpus):
        raise ConfigError(f"num_gpus {num_gpus:g} per run x {runs} run(s) at a time is more "
                          f"than the {gpus} GPU(s) here; lower --gpus-per-run (fractions such "
                          "as 0.25 share a GPU) or --workers, or pass --oversubscribe")
