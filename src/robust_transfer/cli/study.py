"""``study run``, ``status``, ``runs``, ``show``, ``export`` and ``presets``.

Reading a study (``status``, ``runs``, ``show``) needs only the store, so those answer
without importing torch; ``run`` and ``export`` import the runner and pandas when called.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from robust_transfer.cli import validate as v
from robust_transfer.cli.common import command_help
from robust_transfer.study.lock import driver_alive
from robust_transfer.study.query import LISTED, find_runs, parse_where, show_run
from robust_transfer.study.store import StudyStore, export_results

EXECUTOR_NAMES = ("local", "ray", "slurm")  # checked by study.executors.get_executor when run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help=command_help("study"),
                       description="Studies: a YAML spec expanded into runs, executed resumably "
                       "into a SQLite results store (presets: `robust-transfer study presets`).")
    commands = p.add_subparsers(dest="study_command", metavar="SUBCOMMAND")
    _register_run(commands)
    _register_status(commands)
    _register_runs(commands)
    _register_show(commands)
    _register_export(commands)
    _register_repair(commands)
    _register_presets(commands)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def _register_run(sub) -> None:
    p = sub.add_parser("run", help="run the unfinished runs of a study spec",
                       description="Expand SPEC into runs and execute those not finished in "
                       "--out. Safe to interrupt and rerun: finished runs are kept and skipped. "
                       "Exit status 1 when runs failed (recorded with their errors; "
                       "--retry-failed reruns them), 2 for bad input (nothing is run).")
    p.add_argument("spec", help="study spec: a preset name (" + _preset_names() + "; see `study presets`) "
                   "or a YAML file")
    p.add_argument("--out", required=True, type=v.out_dir,
                   help="study directory (results store, feature cache)")
    p.add_argument("--executor", choices=EXECUTOR_NAMES, default=None,
                   help="local: this process or a process pool; ray: a Ray cluster; slurm: "
                   "SLURM job arrays via submitit (default: the spec's executor:, else local)")
    p.add_argument("--workers", type=v.positive_int, default=None,
                   help="runs at a time (local default 1 = in this process; ray default: "
                        "as many as the cluster's CPUs/GPUs allow)")
    p.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (host:port or auto) instead of starting one")
    p.add_argument("--cpus-per-run", type=v.positive_float, default=None,
                   help="CPUs (torch threads) per run (default: the spec's resources.num_cpus)")
    p.add_argument("--gpus-per-run", type=v.nonneg_float, default=None,
                   help="GPUs per run for Ray, fractions allowed, e.g. 0.25 (default: the spec's)")
    p.add_argument("--oversubscribe", action="store_true",
                   help="allow runs to ask for more CPU cores (or GPUs) than this machine has, "
                   "on purpose (otherwise refused: shared cores make every run slower)")
    p.add_argument("--device", default=None, type=v.device_name, help="torch device for runs (default: the spec's, auto)")
    p.add_argument("--device-budget", default=None, type=v.byte_size, metavar="SIZE",
                   help="device memory for each run's data (images, cached prefix outputs), "
                        "e.g. '8 GiB'; beyond it data is streamed from host memory (default: "
                        "the spec's device_budget, else half the run's share of the GPU)")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the spec's or "
                   "$ROBUST_TRANSFER_DATA or ~/.cache/robust_transfer/data)")
    p.add_argument("--no-feature-cache", action="store_true",
                   help="recompute frozen-prefix outputs in every run")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs that failed before")
    p.add_argument("--extend", action="store_true",
                   help="add this spec's runs to a directory holding a different study")
    p.add_argument("--dry-run", action="store_true",
                   help="print run counts, missing inputs and estimated cost; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    _add_slurm_options(p)
    p.set_defaults(func=_run)


def _preset_names() -> str:
    """The shipped presets' names, from their files (no YAML parsed: --help stays fast)."""
    from robust_transfer.study.presets import PRESET_DIR, PRESET_SUFFIX

    return ", ".join(sorted(p.stem for p in PRESET_DIR.glob(f"*{PRESET_SUFFIX}")))


def _add_slurm_options(p) -> None:
    """``--slurm-<field>`` for every SlurmOptions field (help from its metadata)."""
    from dataclasses import fields

    from robust_transfer.study.slurm_jobs import SlurmOptions

    group = p.add_argument_group("slurm executor (override the spec's slurm: section)")
    for f in fields(SlurmOptions):
        flag = "--slurm-" + f.name.replace("_", "-")
        if f.name == "sbatch_args":
            group.add_argument(flag, default=None, metavar="'OPTION ...'", dest="slurm_sbatch_args",
                               help=f.metadata["help"] + " (with '=', quoted: "
                               "--slurm-sbatch-args='--qos=high --exclusive')")
        else:
            kind = {"poll_seconds": v.positive_float}.get(f.name, int if f.name in (
                "gpus_per_run", "cpus_per_run", "array_parallelism", "runs_per_job", "retries",
                "requeues") else str)
            group.add_argument(flag, type=kind, default=None, dest="slurm_" + f.name,
                               help=f.metadata["help"])


def _slurm_overrides(spec, args):
    """The spec's slurm: settings with the --slurm-* options given on top (None: none given)."""
    from dataclasses import fields, replace

    given = {f.name: getattr(args, "slurm_" + f.name) for f in fields(spec.slurm)
             if getattr(args, "slurm_" + f.name, None) is not None}
    if "sbatch_args" in given:
        import shlex

        given["sbatch_args"] = tuple(shlex.split(given["sbatch_args"]))
    return replace(spec.slurm, **given) if given else None


def _register_status(sub) -> None:
    p = sub.add_parser("status", help="how far a study is", description="Counts of finished, "
                       "failed, running and pending runs of a study directory.")
    p.add_argument("dir", help="study directory")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=_status)


def _register_runs(sub) -> None:
    p = sub.add_parser("runs", help="list runs, filtered by what produced them",
                       description="One line per run of a study directory: id, status, source, "
                       "target, n, unfrozen blocks, epochs, seed, test accuracy, seconds. "
                       "Example: study runs DIR --where source=natural n=200 status=finished")
    p.add_argument("dir", help="study directory")
    p.add_argument("--where", nargs="+", default=[], metavar="KEY=VALUE",
                   help="keep runs whose KEY equals VALUE (source, target, n, unfrozen_blocks, "
                   "epochs, seed, status, eps, norm, a recipe field such as lr, or a run_id prefix)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_runs)


def _register_show(sub) -> None:
    p = sub.add_parser("show", help="everything stored about one run",
                       description="The run's config, its results, its pinned source, its "
                       "per-epoch metrics and, for a failed run, its error.")
    p.add_argument("dir", help="study directory")
    p.add_argument("run_id", metavar="RUN_ID", help="a run id or a unique prefix of one")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=_show)


def _register_export(sub) -> None:
    p = sub.add_parser("export", help="write a study's results as CSV or Parquet",
                       description="Writes runs.<fmt> (one row per finished run) and "
                       "epochs.<fmt> (one row per run and epoch).")
    p.add_argument("dir", help="study directory")
    p.add_argument("--format", choices=["csv", "parquet"], default="csv", help="file format")
    p.add_argument("--out", default=None, type=v.out_dir, help="output folder (default: DIR/export)")
    p.set_defaults(func=_export)


def _register_presets(sub) -> None:
    p = sub.add_parser("presets", help="the study specs shipped with the package",
                       description="Without NAME: the presets, which `study run NAME` and "
                       "`demo --spec NAME` accept. With NAME: that preset's YAML, to copy and "
                       "edit (robust-transfer study presets embedded > my-study.yaml).")
    p.add_argument("name", nargs="?", default=None, help="print this preset's YAML")
    p.set_defaults(func=_presets)


# --- handlers ------------------------------------------------------------------------
def _run(args) -> int:
    # imported here: they import torch, which the reading subcommands do without
    from robust_transfer.progress import Progress
    from robust_transfer.study import MissingInputsError, load_spec
    from robust_transfer.study.presets import resolve_spec_path

    spec = load_spec(resolve_spec_path(args.spec))
    if args.dry_run:
        return _dry_run(spec, args)
    _check_device(args.device or spec.device, args.executor or spec.executor)
    progress = None if args.quiet else Progress("study", unit="runs")
    try:
        summary = _call_run(spec, args, progress.study if progress else None)
    except MissingInputsError as err:
        _print_missing(err.items)
        return 2
    finally:
        if progress:
            progress.close(ok=sys.exc_info()[0] is None)
    print(f"{summary.study_dir}: ran {summary.ran} run(s) in {summary.seconds:.1f}s "
          f"({summary.finished} finished, {summary.failed} failed), skipped {summary.skipped} "
          f"already done; store: {summary.store_finished}/{summary.store_total} finished, "
          f"{summary.store_failed} failed")
    for run_id, error in summary.failures[:5]:
        print(f"  failed {run_id}: {error}")
    if summary.store_failed:  # failed now or before: the study is not complete
        print(f"{summary.store_failed} run(s) failed (errors: robust-transfer study status "
              f"{summary.study_dir}); --retry-failed reruns them", file=sys.stderr)
        return 1
    return 0


def _check_device(device: str, executor: str) -> None:
    """A local study runs here: its device must exist here (a Ray cluster's may not)."""
    from robust_transfer.errors import ConfigError

    try:
        if executor == "local":
            v.device(device)
        else:
            v.device_name(device)
    except argparse.ArgumentTypeError as err:
        raise ConfigError(f"study device: {err}") from None


def _register_repair(sub) -> None:
    p = sub.add_parser("repair", help="salvage the finished runs of a damaged study into a new one",
                       description="Copy every finished run that can still be read from DIR's "
                       "study.db (with its epochs, specs and sources) into a new study directory "
                       "--out. DIR is only read. Rerun the spec into --out to redo the rest.")
    p.add_argument("dir", help="the damaged study directory")
    p.add_argument("--out", required=True, type=v.out_dir,
                   help="a new study directory (must not exist, or be empty)")
    p.set_defaults(func=_repair)


def _repair(args) -> int:
    from robust_transfer.study.store import repair_store

    report = repair_store(args.dir, args.out)
    print(f"{report.out_dir}: salvaged {report.finished} finished run(s), {report.specs} spec(s), "
          f"{report.sources} source(s); {report.dropped} finished run(s) with unreadable epochs "
          f"and {report.unreadable_rows} unreadable row(s) left out. Rerun the spec with "
          f"--out {report.out_dir} to redo everything not salvaged.")
    return 0


def _call_run(spec, args, display):
    from robust_transfer.study import run_study

    return run_study(spec, args.out, args.executor, workers=args.workers,
                     ray_address=args.ray_address, retry_failed=args.retry_failed,
                     extend=args.extend, data_root=args.data_root, device=args.device,
                     feature_cache=False if args.no_feature_cache else None,
                     num_cpus=args.cpus_per_run, num_gpus=args.gpus_per_run, progress=display,
                     oversubscribe=args.oversubscribe, slurm=_slurm_overrides(spec, args),
                     device_budget=args.device_budget)


def _dry_run(spec, args) -> int:
    from robust_transfer.study import plan_study

    plan = plan_study(spec, args.out, args.retry_failed, args.data_root)
    est = plan.estimate
    print(f"study '{spec.name}': {plan.total_runs} runs, {plan.finished} already finished, "
          f"{plan.failed} failed, {plan.to_run} to run")
    for line in est.lines():
        print(line)
    if plan.other_study:
        print(f"note: {args.out} holds a different study; running this spec there needs --extend")
    if plan.missing:
        print(f"missing on this machine ({len(plan.missing)}); a real run refuses to start "
              "until they are in place:")
        for item in plan.missing:
            print(f"  - {item}")
    return 0


def _print_missing(items) -> None:
    print(f"error: {len(items)} input(s) missing; nothing was run. Put them in place and rerun:",
          file=sys.stderr)
    for item in items:
        print(f"  - {item}", file=sys.stderr)


def _status(args) -> int:
    with StudyStore(args.dir, readonly=True) as store:
        status = store.status(live=driver_alive(args.dir))
        failures = store.failures(5)
    if args.json:
        from dataclasses import asdict

        from robust_transfer.study.slurm_jobs import slurm_jobs

        jobs = slurm_jobs(args.dir)
        print(json.dumps({**status.to_dict(), **({"slurm_jobs": [asdict(j) for j in jobs]}
                                                 if jobs else {})}))
        return 0
    print(f"{args.dir}: {status.total} runs: {status.finished} finished, {status.failed} failed, "
          f"{status.running} running, {status.pending} pending ({status.missing} missing); "
          f"{_duration(status.seconds)} of run time; {status.specs} spec(s) stored")
    for run_id, error in failures:
        print(f"  failed {run_id}: {error.splitlines()[0] if error else '?'}")
    _print_slurm_jobs(args.dir)
    return 0


def _print_slurm_jobs(study_dir: str) -> None:
    """Runs in SLURM jobs not yet collected: job id, state (squeue), node, log."""
    from robust_transfer.study.slurm_jobs import slurm_jobs

    jobs = slurm_jobs(study_dir)
    if jobs:
        print(f"SLURM jobs of {len(jobs)} run(s) not yet collected:")
    for job in jobs:
        node = f" on {job.node}" if job.node and job.node != "(null)" else ""
        print(f"  {job.state.lower():<10} job {job.job_id}{node} (attempt {job.attempt}) run "
              f"{job.run_id}: log {job.log}")


def _runs(args) -> int:
    rows = find_runs(args.dir, parse_where(args.where))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    header = ["RUN_ID", "STATUS", "SOURCE", "TARGET", "N", "UNFROZEN", "EPOCHS", "SEED",
              "TEST_ACC", "SECONDS"]
    cells = [[_cell(row[k]) for k in LISTED] for row in rows]
    widths = [max(len(c) for c in col) for col in zip(header, *cells, strict=True)]
    for line in (header, *cells):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    print(f"{len(rows)} run(s)", file=sys.stderr)
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value <= 1 else f"{value:.1f}"
    return str(value)


def _show(args) -> int:
    info = show_run(args.dir, args.run_id)
    if args.json:
        print(json.dumps(info))
        return 0
    run = info["run"]
    print(f"run {run['run_id']}: {run['status']}")
    print("config: " + json.dumps(run["config"], sort_keys=True))
    if info["source"]:
        src = info["source"]
        print(f"source {src['label']}: {src['model']} ({src['arch']}, {src['norm']} eps "
              f"{src['eps']}), sha256 {str(src['sha256'])[:16]}..., {src['path']}")
    results = {k: run[k] for k in ("n", "test_acc", "test_loss", "train_acc", "train_loss",
                                   "seconds", "device", "host", "cached_prefix") if run.get(k) is not None}
    if results:
        print("results: " + ", ".join(f"{k} {_cell(v)}" for k, v in results.items()))
    for e in info["epochs"]:
        print(f"  epoch {e['epoch']}: lr {e['lr']:.4g} train loss {_cell(e['train_loss'])} "
              f"acc {_cell(e['train_acc'])} | test acc {_cell(e['test_acc'])}")
    if run.get("error"):
        print("error:\n" + run["error"])
    return 0


def _export(args) -> int:
    for path in export_results(args.dir, args.format, args.out):
        print(path)
    return 0


def _presets(args) -> int:
    from robust_transfer.study.presets import list_presets, resolve_spec_path

    if args.name:
        print(resolve_spec_path(args.name).read_text(encoding="utf-8"), end="")
        return 0
    for preset in list_presets():
        print(f"{preset.name:<10} {preset.description}")
    return 0


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: unknown
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:,.1f} h"

