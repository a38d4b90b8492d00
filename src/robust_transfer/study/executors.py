"""Executors: where runs execute. Each yields outcomes; only the driver writes the store.

* ``local``: in this process (``workers=1``) or a pool of ``workers`` processes. A pool
  worker that dies fails only the run it held; workers end with their driver, even when
  it is SIGKILLed (:func:`die_with_parent`).
* ``ray``: a Ray cluster, started for the study or joined by address; each run reserves
  ``num_cpus`` CPUs and ``num_gpus`` GPUs (fractions let several small runs share a GPU).
  A run whose worker or node dies is rerun elsewhere (:data:`RAY_RETRIES` times).
* ``slurm``: SLURM job arrays through submitit; jobs write result files, the driver
  records them (:mod:`.slurm`).

On a multi-node Ray cluster every node must have robust-transfer installed and see the
checkpoints and datasets at the driver's paths (a shared filesystem, or the same copies),
and the feature cache folder should be shared for runs to share it.

An executor is an iterator factory: ``execute(tasks, ctx, on_start)`` yields a
:class:`RunOutcome` per task as runs end, calling ``on_start(run_ids)`` when runs begin.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from robust_transfer.errors import ConfigError
from robust_transfer.registry import Registry
from robust_transfer.study.slurm_jobs import SlurmOptions, check_slurm
from robust_transfer.study.spec import Resources
from robust_transfer.study.store import RunOutcome
from robust_transfer.study.worker import RunContext, RunTask, execute_run

OnStart = Callable[[list[str]], None]
RAY_RETRIES = 3  # reruns of a Ray task whose worker or node died (e.g. a node removed)


@dataclass
class ExecutorOptions:
    """How to execute.

    Attributes:
        workers: runs at a time (local: processes; Ray: at most this many in flight,
            ``None`` = as many as the cluster's resources allow).
        resources: per-run CPUs / GPUs.
        ray_address: an existing Ray cluster (``host:port`` or ``auto``); ``None``
            starts a local one for the study.
        run_fn: executes one run; a module-level function (it is pickled by reference).
            Replaced only by benchmarks and tests, e.g. with runs of a fixed duration.
        slurm: the SLURM executor's settings.
        study_dir: the study folder (the SLURM executor keeps its files there).
    """

    workers: int | None = 1
    resources: Resources = Resources()
    ray_address: str | None = None
    run_fn: Callable[[RunTask, RunContext], RunOutcome] = execute_run
    slurm: SlurmOptions = SlurmOptions()
    study_dir: str | None = None


EXECUTORS: Registry[Callable[[list[RunTask], RunContext, OnStart, ExecutorOptions],
                             Iterator[RunOutcome]]] = Registry("executor")


def _crashed(task: RunTask, ctx: RunContext, err: BaseException, started: float) -> RunOutcome:
    return RunOutcome(task.run_id, "failed", started, time.time(), socket.gethostname(),
                      device=ctx.device, error=f"worker died while running: {type(err).__name__}: "
                      f"{err} (e.g. killed for memory); --retry-failed reruns it")


# --- local ---------------------------------------------------------------------------
@EXECUTORS.register("local")
def local_executor(tasks: list[RunTask], ctx: RunContext, on_start: OnStart,
                   options: ExecutorOptions) -> Iterator[RunOutcome]:
    """Runs in this process, or in a pool of ``options.workers`` processes."""
    workers = options.workers or 1
    if workers <= 1:
        for task in tasks:
            on_start([task.run_id])
            yield options.run_fn(task, ctx)
        return
    yield from _pool(tasks, ctx, on_start, workers, options.run_fn)


def _pool(tasks: list[RunTask], ctx: RunContext, on_start: OnStart, workers: int,
          run_fn) -> Iterator[RunOutcome]:
    """``workers`` processes, one run each at a time; a worker that dies fails only its run.

    Each worker has its own pipe, so the driver knows which run a dead worker held: that
    run is recorded failed, the worker is replaced, and the runs in flight elsewhere go on.
    Workers end with the driver (:func:`_worker_main`), even when it is SIGKILLed.
    """
    if not tasks:
        return
    pool = _Pool(min(workers, len(tasks)), ctx, run_fn)
    queue = list(reversed(tasks))
    try:
        while queue or pool.busy:
            while queue and pool.has_idle():  # keep exactly `workers` in flight
                task = queue.pop()
                on_start([task.run_id])
                pool.submit(task)
            yield from pool.wait()
    finally:
        pool.close()


class _Worker:
    """One pool process and the driver's end of its pipe."""

    def __init__(self, mpctx, ctx: RunContext, run_fn) -> None:
        self.conn, child = mpctx.Pipe()
        self.process = mpctx.Process(target=_worker_main, args=(child, os.getpid(), run_fn, ctx),
                                     daemon=True, name="robust-transfer-worker")
        self.process.start()
        child.close()
        self.task: RunTask | None = None
        self.started = 0.0


class _Pool:
    """Worker processes, each running one task at a time, replaced when they die."""

    def __init__(self, size: int, ctx: RunContext, run_fn) -> None:
        # spawn, not fork: a forked copy of a process that already ran torch threads can hang
        self.mpctx = mp.get_context("spawn")
        self.ctx, self.run_fn = ctx, run_fn
        self.workers = [_Worker(self.mpctx, ctx, run_fn) for _ in range(max(1, size))]

    @property
    def busy(self) -> list[_Worker]:
        return [w for w in self.workers if w.task is not None]

    def has_idle(self) -> bool:
        return any(w.task is None for w in self.workers)

    def submit(self, task: RunTask) -> None:
        i = next(i for i, w in enumerate(self.workers) if w.task is None)
        if not self.workers[i].process.is_alive():  # died while idle: replace it first
            self.workers[i] = _Worker(self.mpctx, self.ctx, self.run_fn)
        worker = self.workers[i]
        worker.task, worker.started = task, time.time()
        try:
            worker.conn.send(task)
        except OSError:  # it died just now; wait() reports the run as crashed
            pass

    def wait(self) -> Iterator[RunOutcome]:
        """Block until some runs end; yield their outcomes (a dead worker's run failed)."""
        busy = self.busy
        waitables = [w.conn for w in busy] + [w.process.sentinel for w in busy]
        ready = set(mp_connection.wait(waitables))
        for worker in busy:
            if worker.conn not in ready and worker.process.sentinel not in ready:
                continue
            task, outcome = worker.task, self._receive(worker)
            worker.task = None
            if task is None:  # busy workers hold a task; nothing to report otherwise
                continue
            if outcome is None:
                outcome = _died(task, self.ctx, worker.process, worker.started)
                self._replace(worker)
            yield outcome

    @staticmethod
    def _receive(worker: _Worker) -> RunOutcome | None:
        try:
            # the sentinel may fire after the outcome was sent: take the outcome if it is there
            if worker.conn.poll():
                return worker.conn.recv()
        except (EOFError, OSError):
            pass
        return None

    def _replace(self, worker: _Worker) -> None:
        worker.process.join(timeout=5)
        worker.conn.close()
        self.workers[self.workers.index(worker)] = _Worker(self.mpctx, self.ctx, self.run_fn)

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.send(None)  # finish: an idle worker exits at once
            except OSError:
                pass
        for worker in self.workers:
            if worker.task is not None:  # an abandoned run (the driver is stopping)
                worker.process.kill()
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()


def _died(task: RunTask, ctx: RunContext, process, started: float) -> RunOutcome:
    process.join(timeout=5)
    code = process.exitcode
    how = (f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
           else f"exit status {code}")
    return RunOutcome(task.run_id, "failed", started, time.time(), socket.gethostname(),
                      device=ctx.device, error=f"worker process died while running ({how}; "
                      "e.g. killed for memory); --retry-failed reruns it")


# --- worker side ---------------------------------------------------------------------
def _worker_main(conn, parent_pid: int, run_fn, ctx: RunContext) -> None:
    """A pool worker: runs tasks from ``conn`` until told to stop or the driver is gone."""
    die_with_parent(parent_pid)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the driver closed the pipe or died
            return
        if task is None:
            return
        conn.send(run_fn(task, ctx))


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """End this process when ``parent_pid`` (the driver) dies, even by SIGKILL.

    Two mechanisms, because either alone has a gap: on Linux the kernel sends SIGKILL on
    the parent's death (``prctl(PR_SET_PDEATHSIG)``; it fires when the parent *thread*
    that started us exits, and not at all if the parent died before the call), and a
    daemon thread checks every ``poll_seconds`` that the parent is still ``getppid()``
    (which covers the race and systems without prctl).
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still works
    if os.getppid() != parent_pid:  # the driver died before prctl took effect
        os._exit(1)

    def watchdog() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()


# --- Ray -----------------------------------------------------------------------------
@EXECUTORS.register("ray")
def ray_executor(tasks: list[RunTask], ctx: RunContext, on_start: OnStart,
                 options: ExecutorOptions) -> Iterator[RunOutcome]:
    """Runs as Ray tasks; results come back to the driver through the object store."""
    ray = _import_ray()
    started_here = _init_ray(ray, options)
    try:
        yield from _ray_loop(ray, tasks, ctx, on_start, options)
    finally:
        if started_here:
            ray.shutdown()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'robust-transfer[ray]' "
                          "(or use --executor local)") from None
    return ray


def _init_ray(ray, options: ExecutorOptions) -> bool:
    """Join ``options.ray_address`` or start a local cluster; True if we started one."""
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if options.ray_address:
        check_ray_address(options.ray_address)
        try:
            ray.init(address=options.ray_address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ConfigError(f"cannot join the Ray cluster at {options.ray_address}: "
                              f"{str(err).splitlines()[0]}; if the cluster uses token "
                              "authentication (the default for `ray start` since Ray 2.59), "
                              "set RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN if the token is not "
                              "in ~/.ray/auth_token) for this command") from None
        return True
    cpus = None
    if options.workers:  # a local cluster just big enough for `workers` runs at a time
        cpus = max(1, int(options.workers * options.resources.num_cpus + 0.999))
    # address="local": always a fresh cluster of our size, never one a `ray start` left running
    ray.init(address="local", num_cpus=cpus, **quiet)
    return True


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when ``host:port`` does not answer (Ray would retry a minute).

    Raises:
        ConfigError: the address is malformed or nothing listens there.
    """
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address '{address}' is not host:port (e.g. 10.0.0.1:6379) or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f"Ray address {address} does not answer ({err.strerror or err}); start "
                          "the cluster with 'ray start --head' or fix --ray-address") from None


def _ray_loop(ray, tasks: list[RunTask], ctx: RunContext, on_start: OnStart,
              options: ExecutorOptions) -> Iterator[RunOutcome]:
    res = options.resources
    # Ray reruns a task whose worker process or node died (never one that raised: runs
    # return their failures); after RAY_RETRIES such deaths the run is recorded failed
    remote = ray.remote(options.run_fn).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus,
                                             max_retries=RAY_RETRIES, retry_exceptions=False)
    ctx_ref = ray.put(ctx)  # shipped once, not with every task
    gpus = ray.cluster_resources().get("GPU", 0)
    if res.num_gpus > gpus:  # Ray would wait forever for such a task
        raise ConfigError(f"each run asks for num_gpus {res.num_gpus:g} but the Ray cluster has "
                          f"{gpus:g} GPU(s); use a smaller num_gpus")
    limit = options.workers or _ray_capacity(ray, res)
    queue = list(reversed(tasks))
    running: dict[Any, tuple[RunTask, float]] = {}  # Ray object ref -> (task, start time)
    while queue or running:
        while queue and len(running) < limit:
            task = queue.pop()
            on_start([task.run_id])
            running[remote.remote(task, ctx_ref)] = (task, time.time())
        done, _ = ray.wait(list(running), num_returns=1)
        for ref in done:
            task, started = running.pop(ref)
            try:
                yield ray.get(ref)
            except Exception as err:  # died RAY_RETRIES + 1 times (OOM, node loss): fails its run only
                yield _crashed(task, ctx, err, started)


def _ray_capacity(ray, res: Resources) -> int:
    total = ray.cluster_resources()
    by_cpu = total.get("CPU", 1) / res.num_cpus
    by_gpu = total.get("GPU", 0) / res.num_gpus if res.num_gpus else by_cpu
    return max(1, int(min(by_cpu, by_gpu)))


# --- SLURM ---------------------------------------------------------------------------
@EXECUTORS.register("slurm")
def slurm_executor(tasks: list[RunTask], ctx: RunContext, on_start: OnStart,
                   options: ExecutorOptions) -> Iterator[RunOutcome]:
    """Runs as SLURM job arrays (submitit); jobs write result files, the driver records."""
    from robust_transfer.study.slurm import slurm_executor as run_on_slurm

    yield from run_on_slurm(tasks, ctx, on_start, options)


def _check_slurm(options: ExecutorOptions) -> None:
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError("the slurm executor needs submitit: pip install 'robust-transfer[slurm]' "
                          "(or use --executor local)") from None
    res, opts = options.resources, options.slurm
    gpus = opts.gpus_per_run if opts.gpus_per_run is not None else int(-(-res.num_gpus // 1))
    check_slurm(opts, opts.cpus_per_run or res.threads, gpus)


def get_executor(name: str, options: ExecutorOptions | None = None):
    """The executor registered as ``name`` (``local``, ``ray``, ``slurm``), checked before use.

    Raises:
        UnknownNameError: no such executor (the valid ones listed).
        ConfigError: Ray or submitit is not installed, ``options.ray_address`` does not
            answer, or SLURM is missing, does not answer or refuses ``options.slurm``.
    """
    executor = EXECUTORS.get(name)
    if name == "ray":
        _import_ray()
        if options is not None and options.ray_address:
            check_ray_address(options.ray_address)
    if name == "slurm":
        _check_slurm(options or ExecutorOptions())
    return executor
