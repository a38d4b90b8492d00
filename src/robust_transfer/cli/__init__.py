"""The ``robust-transfer`` command: a thin layer over the Python API.

Each command group lives in its own module with ``register(subparsers)``, which adds its
parser(s) and sets ``func`` to a handler ``handler(args) -> int``. Handlers call the
library and print; the library never prints. A :class:`RobustTransferError` becomes one
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from robust_transfer import __version__
from robust_transfer.errors import RobustTransferError

# command modules, in the order their commands appear in --help
COMMAND_MODULES = [
    "robust_transfer.cli.demo",
    "robust_transfer.cli.train",
    "robust_transfer.cli.zoo",
    "robust_transfer.cli.data",
    "robust_transfer.cli.study",
    "robust_transfer.cli.analyze",
    "robust_transfer.cli.explain",
    "robust_transfer.cli.recommend",
]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``error: ...``, exit 2), like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="robust-transfer",
        description="Adversarially trained source models and how well they transfer "
        "(arXiv 2007.05869).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # what the user typed, for provenance (checkpoint metadata records it)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except RobustTransferError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `robust-transfer zoo list | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
