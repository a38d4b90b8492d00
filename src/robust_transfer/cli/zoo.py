"""``robust-transfer zoo``: list the model zoo and fetch published checkpoints (no torch needed)."""

from __future__ import annotations

import argparse
from typing import Any

from robust_transfer.cli import validate
from robust_transfer.cli.common import command_help
from robust_transfer.models import zoo

_COLUMNS = (("NAME", "name"), ("ARCH", "arch"), ("NORM", "norm"), ("EPS", "eps"),
            ("SOURCE", "source_dataset"), ("CLEAN", "clean_acc"), ("ROBUST", "robust_acc"),
            ("LOCAL", "local"))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``zoo list`` and ``zoo fetch`` to the top-level parser."""
    parser = subparsers.add_parser(
        "zoo", help=command_help("zoo"),
        description="Embedded small source models and the published robust ImageNet "
        f"checkpoints and torchvision's ImageNet weights. Published files live in ${zoo.ZOO_ENV} "
        "(default ~/.cache/robust_transfer/zoo), torchvision's in torch hub's cache ($TORCH_HOME).")
    actions = parser.add_subparsers(dest="zoo_action", metavar="ACTION")
    parser.set_defaults(func=lambda args: _print_help(parser))

    lister = actions.add_parser("list", help="a table of every zoo model",
                                description="Embedded models first, then the published ones.")
    lister.add_argument("--local", action="store_true",
                        help="show only models whose files are on this machine")
    lister.add_argument("--kind", choices=("all", "embedded", "published", "torchvision"),
                        default="all",
                        help="which models to show (default: all)")
    lister.set_defaults(func=_list)

    fetcher = actions.add_parser("fetch", help="print the local path of a zoo model, "
                                 "downloading a published one with --download")
    fetcher.add_argument("name", metavar="NAME", help="a zoo name, as shown by 'zoo list'")
    fetcher.add_argument("--download", action="store_true",
                         help="download the file if it is missing (never done unasked)")
    fetcher.add_argument("--dest", metavar="DIR", default=None, type=validate.out_dir,
                         help=f"folder for published files (default: ${zoo.ZOO_ENV} or the cache)")
    fetcher.set_defaults(func=_fetch)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1


def _list(args: argparse.Namespace) -> int:
    rows = [r for r in zoo.zoo_listing()
            if (args.kind in ("all", r["kind"])) and (r["local"] or not args.local)]
    print(format_table(rows))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    fresh = args.dest is not None and not args.dest.exists()
    try:
        print(zoo.fetch(args.name, dest_dir=args.dest, allow_download=args.download))
    except BaseException:
        if fresh and args.dest.is_dir() and not any(args.dest.iterdir()):
            args.dest.rmdir()  # a refused or failed fetch leaves no empty folder behind
        raise
    return 0


def format_table(rows: list[dict[str, Any]]) -> str:
    """Aligned text table of zoo rows; accuracies as percentages, unknown values as ``-``."""
    cells = [[_cell(row[key]) for _, key in _COLUMNS] for row in rows]
    header = [title for title, _ in _COLUMNS]
    widths = [max(len(c) for c in column) for column in zip(header, *cells, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in (header, *cells)]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1%}"
    return str(value)
