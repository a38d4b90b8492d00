"""Helpers shared by the CLI tests."""

from __future__ import annotations

from robust_transfer.cli import main


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of one command; argparse's own errors exit via SystemExit."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
