"""Helpers shared by the command modules: parsing values, common options."""

from __future__ import annotations

import argparse
from fractions import Fraction


def parse_eps(text: str) -> float:
    """``0.5``, ``8/255`` -> float pixels; negative values are refused."""
    try:
        value = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"eps must be >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def n_images(text: str) -> int | None:
    """A positive number of images, or ``all`` (None)."""
    return None if text == "all" else positive_int(text)


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (CUDA if available, else CPU), cpu, cuda, cuda:1")


def add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", default=None,
                        help="folder holding datasets (default: $ROBUST_TRANSFER_DATA or "
                             "~/.cache/robust_transfer/data)")
    parser.add_argument("--download", action="store_true",
                        help="download missing torchvision datasets (needs the internet)")

