"""Stand-in runs for the reliability tests (no tests here).

They are module-level so pool workers, which are spawned, can import them by name; their
results depend only on the run id, so a resumed study can be compared with a clean one.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from robust_transfer.study.store import RunOutcome
from robust_transfer.study.worker import RunContext, RunTask

PID_DIR_ENV = "RT_TEST_PID_DIR"
SECONDS_ENV = "RT_TEST_RUN_SECONDS"
STARTS_ENV = "RT_TEST_STARTS_DIR"


def _outcome(task: RunTask, start: float) -> RunOutcome:
    # a result that depends only on the run: better with more images and the robust source
    c = task.config
    acc = (0.5 + 0.1 * (c.source == "robust") + int(c.n) / 1000
           + int(task.run_id[:4], 16) / 0xFFFF / 100)
    history = tuple({"epoch": e, "lr": 0.1, "train_loss": 1.0 / e, "train_acc": acc,
                     "test_loss": 1.0 / e, "test_acc": acc} for e in (1, 2))
    return RunOutcome(task.run_id, "finished", start, time.time(), worker=str(os.getpid()),
                      n=int(task.config.n), history=history)


def timed_run(task: RunTask, ctx: RunContext) -> RunOutcome:
    """Sleeps ``$RT_TEST_RUN_SECONDS`` (default 0.3); notes its pid in ``$RT_TEST_PID_DIR``.

    Under Ray it also notes ``<run_id>@<node id>`` in ``$RT_TEST_STARTS_DIR`` as it starts,
    and reports the node as its worker, so a test can tell where each attempt ran.
    """
    start = time.time()
    folder = os.environ.get(PID_DIR_ENV)
    if folder:
        Path(folder, str(os.getpid())).touch()
    node = _ray_node()
    starts = os.environ.get(STARTS_ENV)
    if starts and node:
        Path(starts, f"{task.run_id}@{node}").touch()
    time.sleep(float(os.environ.get(SECONDS_ENV, "0.3")))
    outcome = _outcome(task, start)
    return replace(outcome, worker=node) if node else outcome


def _ray_node() -> str | None:
    if "ray" not in sys.modules:
        return None
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def suicidal_run(task: RunTask, ctx: RunContext) -> RunOutcome:
    """The natural source's seed-0 run SIGKILLs its own worker after 0.3 s; others take 1.2 s."""
    start = time.time()
    if task.config.source == "natural" and task.config.seed == 0:
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(1.2)
    return _outcome(task, start)


def seed0_fails(task: RunTask, ctx: RunContext) -> RunOutcome:
    """Runs with seed 0 fail (as a run that raised would); the others finish at once."""
    if task.config.seed == 0:
        return RunOutcome(task.run_id, "failed", time.time(), time.time(),
                          error="RuntimeError: planted failure")
    return _outcome(task, time.time())
