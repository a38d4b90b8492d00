"""The ``robust-transfer`` command: a thin layer over the Python API.

Each command lives in the module :data:`~robust_transfer.cli.common.COMMANDS` names, with
``register(subparsers)``, which adds its parser(s) and sets ``func`` to a handler
``handler(args) -> int``. Handlers call the library and print; the library never prints.
A :class:`RobustTransferError` becomes one line on stderr and exit status 2.

Only the module of the command being run is imported (the others appear in ``--help``
by name and help line), so ``--help``, ``--version``, ``zoo list`` and ``study status``
answer without importing torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import signal
import sys
import threading
from collections.abc import Iterator

from robust_transfer import __version__
from robust_transfer.cli.common import COMMANDS
from robust_transfer.errors import RobustTransferError
from robust_transfer.progress import DEFAULT_INTERVAL, INTERVAL_ENV, LOG_LEVELS, configure_logging
from robust_transfer.registry import did_you_mean

PACKAGE = "robust_transfer.cli"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``error: ...``, exit 2), like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:  # argparse lists the choices; suggest the closest first
            choices = re.findall(r"'?([\w.-]+)'?", found.group(2))
            message = message.replace(f"'{found.group(1)}'", f"'{found.group(1)}'"
                                      f"{did_you_mean(found.group(1), choices)}", 1)
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command-line parser.

    Args:
        argv: the arguments about to be parsed: only the module of the command they name
            is imported. ``None`` builds every command's parser (completion, tests).

    Returns:
        The parser.
    """
    parser = _Parser(prog="robust-transfer", description="Adversarially trained source models "
                     "and how well they transfer (arXiv 2007.05869).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="log and progress lines shown on stderr (default info; warning "
                        "and above also hide progress)")
    parser.add_argument("--progress-interval", type=float, default=None, metavar="SECONDS",
                        help=f"off a terminal, a progress line every SECONDS (default "
                        f"${INTERVAL_ENV} or {DEFAULT_INTERVAL:g})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    wanted = _modules_for(argv)
    registered: set[str] = set()
    for name, command in COMMANDS.items():
        if name in registered:
            continue
        if command.module in wanted:
            before = set(sub.choices)
            importlib.import_module(f"{PACKAGE}.{command.module}").register(sub)
            registered |= set(sub.choices) - before
            wanted.discard(command.module)
        else:  # listed by name and help; its module is not imported
            sub.add_parser(name, help=command.help, add_help=False)
            registered.add(name)
    return parser


# top-level options followed by a value, which is not the command's name
_VALUED_OPTIONS = ("--log-level", "--progress-interval")


def _modules_for(argv: list[str] | None) -> set[str]:
    if argv is None:
        return {c.module for c in COMMANDS.values()}
    args = iter(argv)
    first = None
    for arg in args:
        if arg in _VALUED_OPTIONS:
            next(args, None)
        elif not arg.startswith("-"):
            first = arg
            break
    return {COMMANDS[first].module} if first in COMMANDS else set()


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_in)
    args = parser.parse_args(args_in)
    # what the user typed, for provenance (checkpoint metadata records it)
    args.argv = args_in
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        configure_logging(args.log_level, args.progress_interval)
        with _terminate_as_interrupt():
            return int(args.func(args) or 0)
    except RobustTransferError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `robust-transfer zoo list | head`
        sys.stderr.close()
        return 0
    except Terminated:
        print(f"terminated (SIGTERM): {_STOPPED}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"interrupted: {_STOPPED}", file=sys.stderr)
        return 130


_STOPPED = ("stopped, nothing half-written left behind (a study keeps its finished runs: "
            "rerun it to resume)")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so it unwinds (and cleans up) as Ctrl-C does."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While a command runs in the main thread, SIGTERM raises :class:`Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
