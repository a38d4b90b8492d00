"""``demo``: the embedded study end to end (fine-tune, analyse, report) on the CPU."""

from __future__ import annotations

import argparse
import sys
import time

from robust_transfer.cli import validate as v


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the embedded study end to end: fine-tune, analyse, report",
                       description="Fine-tune the embedded zoo's natural and robust sources on "
                       "the digits target (the `embedded` preset), analyse the results with 95% "
                       "confidence intervals and write an HTML + Markdown report. Rerunning "
                       "resumes: finished runs are kept.")
    p.add_argument("--spec", default="embedded",
                   help="study spec: a preset name or a YAML file (default: the embedded preset)")
    p.add_argument("--out", default="runs/demo", type=v.out_dir,
                   help="study directory (default runs/demo)")
    p.add_argument("--workers", type=v.positive_int, default=1,
                   help="runs at a time in separate processes (default 1: in this process)")
    p.add_argument("--device", default=None, type=v.device,
                   help="override the spec's device (auto, cpu, cuda)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the inputs and print the plan and its estimated time; run nothing")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from robust_transfer.analysis import analyze_study
    from robust_transfer.progress import Progress
    from robust_transfer.study.presets import resolve_spec_path
    from robust_transfer.study.runner import run_study

    spec = resolve_spec_path(args.spec)
    if args.dry_run:
        return _dry_run(spec, args.out)
    from robust_transfer.study.spec import load_spec

    start = time.perf_counter()
    loaded = load_spec(spec)  # a bad spec is one error line, before anything is printed
    print(f"demo: running {spec} into {args.out}", file=sys.stderr)
    with Progress("study", unit="runs") as progress:
        summary = run_study(loaded, args.out, workers=args.workers, device=args.device,
                            progress=progress.study)
    print(f"demo: {summary.finished} runs finished now, {summary.skipped} already done, "
          f"{summary.failed} failed ({summary.seconds:.0f} s)", file=sys.stderr)
    for run_id, error in summary.failures[:5]:
        print(f"  failed {run_id}: {error}", file=sys.stderr)
    result = analyze_study(args.out)
    print("\nThe answer:")
    for line in result.sentences:
        print(f"  - {line}")
    print("\nHeadline findings:")
    for line in result.headlines:
        print(f"  - {line}")
    print(f"\nreport: {result.html_path}")
    print(f"        {result.markdown_path}")
    print(f"demo took {time.perf_counter() - start:.0f} s")
    return 0 if summary.failed == 0 else 1


def _dry_run(spec, out: str) -> int:
    from robust_transfer.progress import format_duration
    from robust_transfer.study import plan_study

    plan = plan_study(spec, out)
    print(f"demo: {spec}: {plan.total_runs} runs, {plan.finished} already finished in {out}, "
          f"{plan.to_run} to run, about {format_duration(plan.estimate.seconds)} on this machine")
    for item in plan.missing:
        print(f"  missing: {item}")
    return 2 if plan.missing else 0
