"""``robust-transfer analyze``: tables, figures and a report from a study or a CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from robust_transfer.analysis.intervals import CI_METHODS, CIOptions
from robust_transfer.cli import validate as v
from robust_transfer.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``analyze`` command."""
    parser = subparsers.add_parser(
        "analyze", help="tables, figures and an HTML/Markdown report of finished runs",
        description="Analyse a study directory (or a CSV of results from other code): "
        "accuracy with confidence intervals across seeds, paired differences from the "
        "natural source, how many times fewer images and epochs, figures and a report.")
    parser.add_argument("study_dir", nargs="?", type=Path, metavar="DIR",
                        help="study directory (read through the study store)")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="analyse a CSV with columns source, target, n, unfrozen_blocks, "
                        "epochs, seed, test_acc (optional eps, norm) instead of a study")
    parser.add_argument("--out", type=v.out_dir, metavar="DIR",
                        help="report directory (default: DIR/analysis, or FILE-analysis/)")
    parser.add_argument("--baseline", metavar="LABEL",
                        help="source label to compare with (default: the eps-0 'natural' one)")
    parser.add_argument("--ci", choices=CI_METHODS.names(), default="t",
                        help="interval across seeds (default: t)")
    parser.add_argument("--level", type=v.open_unit, default=0.95, help="interval level (0.95)")
    parser.add_argument("--spec", type=Path, metavar="FILE",
                        help="study specification to include in the report")
    parser.add_argument("--unfrozen", metavar="K", type=v.unfrozen, help="unfrozen-blocks setting the headlines "
                        "quote (default: the fewest)")
    parser.add_argument("--epochs", type=v.positive_int, metavar="E", help="epoch budget the headlines "
                        "quote (default: the largest)")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="skip the figures (faster)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Analyse, then print the headline findings and the report's paths."""
    from robust_transfer.analysis import Reference, analyze_csv, analyze_study  # heavy: lazy

    if (args.csv is None) == (args.study_dir is None):
        raise ConfigError("give a study directory DIR or --csv FILE (exactly one)")
    kwargs = {"baseline": args.baseline, "figures": args.figures,
              "options": CIOptions(method=args.ci, level=args.level),
              "reference": Reference(unfrozen_blocks=args.unfrozen, epochs=args.epochs),
              "spec_text": _read_spec(args.spec)}
    if args.csv is not None:
        result = analyze_csv(args.csv, args.out, **kwargs)
    else:
        result = analyze_study(args.study_dir, args.out, **kwargs)
    print(f"{result.coverage.sentence()}; baseline: {result.baseline}")
    for line in result.headlines:
        print(f"- {line}")
    print(f"report: {result.html_path}")
    print(f"markdown: {result.markdown_path}")
    return 0


def _read_spec(path: Path | None) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"spec file {path} does not exist")
    return path.read_text(encoding="utf-8")
