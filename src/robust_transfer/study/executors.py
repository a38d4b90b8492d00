"""Executors: where runs execute. Each yields outcomes; only the driver writes the store.

* ``local``: in this process (``workers=1``) or a pool of ``workers`` processes.
* ``ray``: a Ray cluster, started for the study or joined by address; each run reserves
  ``num_cpus`` CPUs and ``num_gpus`` GPUs (fractions let several small runs share a GPU).

On a multi-node Ray cluster every node must have robust-transfer installed and see the
checkpoints and datasets at the driver's paths (a shared filesystem, or the same copies),
and the feature cache folder should be shared for runs to share it.

An executor is an iterator factory: ``execute(tasks, ctx, on_start)`` yields a
:class:`RunOutcome` per task as runs end, calling ``on_start(run_ids)`` when runs begin.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from robust_transfer.errors import ConfigError
from robust_transfer.registry import Registry
from robust_transfer.study.spec import Resources
from robust_transfer.study.store import RunOutcome
from robust_transfer.study.worker import RunContext, RunTask, execute_run

OnStart = Callable[[list[str]], None]


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
    """

    workers: int | None = 1
    resources: Resources = Resources()
    ray_address: str | None = None
    run_fn: Callable[[RunTask, RunContext], RunOutcome] = execute_run


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
    # spawn, not fork: a forked copy of a process that already ran torch threads can hang
    pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
    queue, running = list(reversed(tasks)), {}
    try:
        while queue or running:
            while queue and len(running) < workers:  # keep exactly `workers` in flight
                task = queue.pop()
                on_start([task.run_id])
                running[pool.submit(run_fn, task, ctx)] = (task, time.time())
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in done:
                task, started = running.pop(future)
                yield _result(future, task, ctx, started)
            if any(isinstance(f.exception(), cf.process.BrokenProcessPool) for f in done):
                pool.shutdown(wait=False, cancel_futures=True)
                pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _result(future: cf.Future, task: RunTask, ctx: RunContext, started: float) -> RunOutcome:
    err = future.exception()
    return future.result() if err is None else _crashed(task, ctx, err, started)


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
    remote = ray.remote(options.run_fn).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus,
                                             max_retries=0)
    ctx_ref = ray.put(ctx)  # shipped once, not with every task
    limit = options.workers or _ray_capacity(ray, res)
    queue, running = list(reversed(tasks)), {}
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
            except Exception as err:  # a worker that died (OOM, node loss) fails its run only
                yield _crashed(task, ctx, err, started)


def _ray_capacity(ray, res: Resources) -> int:
    total = ray.cluster_resources()
    by_cpu = total.get("CPU", 1) / res.num_cpus
    by_gpu = total.get("GPU", 0) / res.num_gpus if res.num_gpus else by_cpu
    return max(1, int(min(by_cpu, by_gpu)))


def get_executor(name: str, options: ExecutorOptions | None = None):
    """The executor registered as ``name`` (``local``, ``ray``), checked before use.

    Raises:
        UnknownNameError: no such executor (the valid ones listed).
        ConfigError: Ray is not installed, or ``options.ray_address`` does not answer.
    """
    executor = EXECUTORS.get(name)
    if name == "ray":
        _import_ray()
        if options is not None and options.ray_address:
            check_ray_address(options.ray_address)
    return executor
