"""``robust-transfer analyze``: tables, figures and a report from a study or a CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from robust_transfer.analysis.budgets import EPOCH_POLICIES
from robust_transfer.analysis.intervals import CI_METHODS, CIOptions
from robust_transfer.cli import validate as v
from robust_transfer.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``analyze`` command."""
    parser = subparsers.add_parser(
        "analyze", help="tables, figures and an HTML/Markdown report of finished runs",
        description="Analyse a study directory (or CSVs of results from other code): "
        "a verdict (robust minus natural per n and unfrozen setting), accuracy with "
        "confidence intervals across seeds, how many times fewer images and epochs, the "
        "sources, influence and saliency outputs, figures and a report.")
    parser.add_argument("study_dir", nargs="?", type=Path, metavar="DIR",
                        help="study directory (read through the study store)")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="analyse a CSV with one row per run: source, target, n, "
                        "unfrozen_blocks, epochs, seed, test_acc (optional eps, norm, run_id)")
    parser.add_argument("--epochs-csv", type=Path, metavar="FILE",
                        help="per-epoch rows of the --csv runs: run_id, epoch, test_acc")
    parser.add_argument("--n-all", action="append", default=[], metavar="TARGET=SIZE",
                        help="images that n = all (or -1) stands for on TARGET, for CSVs "
                        "without an n_used column (repeatable)")
    parser.add_argument("--out", type=v.out_dir, metavar="DIR",
                        help="report directory (default: DIR/analysis, or FILE-analysis/)")
    parser.add_argument("--baseline", metavar="LABEL",
                        help="source label to compare with (default: the eps-0 'natural' one)")
    parser.add_argument("--ci", choices=CI_METHODS.names(), default="t",
                        help="interval across seeds (default: t)")
    parser.add_argument("--level", type=v.open_unit, default=0.95, help="interval level (0.95)")
    parser.add_argument("--spec", type=Path, metavar="FILE",
                        help="study specification to include in the report")
    parser.add_argument("--unfrozen", metavar="K", help="unfrozen-blocks setting the headlines "
                        "quote (default: the fewest; 'all' or -1 for every block)")
    parser.add_argument("--epochs", type=v.positive_int, metavar="E", help="epoch budget the headlines "
                        "and figures quote (default: the largest)")
    parser.add_argument("--n", metavar="N", help="n of the epoch figures and the few-epochs "
                        "sentence (default: the largest n with at least two seeds)")
    parser.add_argument("--epoch-policy", choices=EPOCH_POLICIES, default="final",
                        help="which epoch of each run counts: final (default) or best "
                        "(chosen on test accuracy, so optimistic)")
    parser.add_argument("--block-baseline", metavar="K", help="unfrozen setting the others "
                        "are compared with (default: the fewest; the paper compares 3)")
    parser.add_argument("--influence", action="append", default=[], type=Path, metavar="PATH",
                        help="an influence output folder to show (repeatable; ones inside "
                        "the study directory are found)")
    parser.add_argument("--saliency", action="append", default=[], type=Path, metavar="PATH",
                        help="a saliency output folder to show (repeatable)")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="skip the figures (faster)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Analyse, then print the verdict, the headline findings and the report's paths."""
    from robust_transfer.analysis import Reference, analyze_csv, analyze_study  # heavy: lazy

    if (args.csv is None) == (args.study_dir is None):
        raise ConfigError("give a study directory DIR or --csv FILE (exactly one)")
    if args.csv is None and (args.epochs_csv is not None or args.n_all):
        raise ConfigError("--epochs-csv and --n-all go with --csv (a study has its own epochs)")
    kwargs = {"baseline": args.baseline, "figures": args.figures,
              "options": CIOptions(method=args.ci, level=args.level),
              "reference": Reference(unfrozen_blocks=args.unfrozen, epochs=args.epochs,
                                     n_label=args.n),
              "spec_text": _read_spec(args.spec), "epoch_policy": args.epoch_policy,
              "block_baseline": args.block_baseline, "influence": args.influence,
              "saliency": args.saliency}
    for path in [*args.influence, *args.saliency]:
        if not path.is_dir():
            raise ConfigError(f"output folder {path} does not exist")
    if args.csv is not None:
        result = analyze_csv(args.csv, args.out, epochs_csv=args.epochs_csv,
                             n_all=_n_all(args.n_all), **kwargs)
    else:
        result = analyze_study(args.study_dir, args.out, **kwargs)
    print(f"{result.coverage.sentence()}; baseline: {result.baseline}")
    for sentence in result.sentences:
        print(sentence)
    for line in result.headlines:
        print(f"- {line}")
    for title, section in (("robustness after transfer", result.robustness),
                           ("tuned on validation", result.tuning)):
        if section is not None and section.sentences:
            print(f"{title}:")
            for sentence in section.sentences:
                print(f"- {sentence}")
    print(f"report: {result.html_path}")
    print(f"markdown: {result.markdown_path}")
    return 0


def _n_all(items: list[str]) -> dict[str, int]:
    sizes = {}
    for item in items:
        target, sep, size = item.partition("=")
        if not sep or not size.isdigit() or int(size) < 1:
            raise ConfigError(f"--n-all {item}: expected TARGET=SIZE, e.g. cifar10=50000")
        sizes[target] = int(size)
    return sizes


def _read_spec(path: Path | None) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"spec file {path} does not exist")
    return path.read_text(encoding="utf-8")
