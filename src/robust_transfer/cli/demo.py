"""``demo``: the embedded study end to end (fine-tune, analyse, report) on the CPU."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from robust_transfer.cli import validate as v

# the preset lives in the repository's studies/ folder
_EMBEDDED = Path(__file__).resolve().parents[3] / "studies" / "embedded.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the embedded study end to end: fine-tune, analyse, report",
                       description="Fine-tune the embedded zoo's natural and robust sources on "
                       "the digits target (studies/embedded.yaml), analyse the results with 95%% "
                       "confidence intervals and write an HTML + Markdown report. Rerunning "
                       "resumes: finished runs are kept.")
    p.add_argument("--spec", default=str(_EMBEDDED), help="study spec (default studies/embedded.yaml)")
    p.add_argument("--out", default="runs/demo", type=v.out_dir, help="study directory (default runs/demo)")
    p.add_argument("--workers", type=v.positive_int, default=1,
                   help="runs at a time in separate processes (default 1: in this process)")
    p.add_argument("--device", default=None, type=v.device, help="override the spec's device (auto, cpu, cuda)")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from robust_transfer.analysis import analyze_study
    from robust_transfer.cli.study import ProgressDisplay
    from robust_transfer.errors import ConfigError
    from robust_transfer.study.runner import run_study

    spec = Path(args.spec)
    if not spec.is_file():
        raise ConfigError(f"study spec {spec} not found; run the demo from the repository "
                          f"checkout or pass --spec PATH")
    start = time.perf_counter()
    print(f"demo: running {spec} into {args.out}", file=sys.stderr)
    display = ProgressDisplay()
    try:
        summary = run_study(spec, args.out, workers=args.workers, device=args.device,
                            progress=display)
    finally:
        display.close()
    print(f"demo: {summary.finished} runs finished now, {summary.skipped} already done, "
          f"{summary.failed} failed ({summary.seconds:.0f} s)", file=sys.stderr)
    for run_id, error in summary.failures[:5]:
        print(f"  failed {run_id}: {error}", file=sys.stderr)
    result = analyze_study(args.out)
    print("\nHeadline findings:")
    for line in result.headlines:
        print(f"  - {line}")
    print(f"\nreport: {result.html_path}")
    print(f"        {result.markdown_path}")
    print(f"demo took {time.perf_counter() - start:.0f} s")
    return 0 if summary.failed == 0 else 1
