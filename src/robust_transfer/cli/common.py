"""Helpers shared by the command modules: the command table, parsing values.

This module is imported to build every parser, so it imports nothing heavy.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

from robust_transfer.cli import validate
from robust_transfer.errors import ConfigError
from robust_transfer.models.finetune import UnfrozenBlocks, parse_n, parse_unfrozen


class Command(NamedTuple):
    """A top-level command: the module that registers it and its one-line help."""

    module: str
    help: str


# in the order --help lists them; a module is imported only when its command runs
COMMANDS: dict[str, Command] = {
    "demo": Command("demo", "the embedded study end to end: fine-tune, analyse, report"),
    "pretrain": Command("train", "train a source model (natural, PGD or FGSM-RS adversarial)"),
    "finetune": Command("train", "fine-tune a source model on a target dataset"),
    "evaluate": Command("train", "clean and PGD robust accuracy of a model"),
    "zoo": Command("zoo", "list the model zoo and fetch published checkpoints"),
    "data": Command("data", "list datasets and where their files are expected"),
    "study": Command("study", "run a grid of fine-tuning runs (a study) and read its results"),
    "analyze": Command("analyze", "tables, figures and an HTML/Markdown report of finished runs"),
    "influence": Command("influence", "last-layer influence functions: top-k images, "
                         "class-match curves"),
    "lds": Command("lds", "linear datamodeling score of influence methods: retrain on random "
                   "subsets of study runs"),
    "saliency": Command("saliency", "input-gradient maps, models side by side"),
    "recommend": Command("recommend", "rank source models for a target by head-only probes "
                         "on a held-out validation set (never the test set)"),
    "completion": Command("completion", "print a shell completion script (bash or zsh)"),
}


def command_help(name: str) -> str:
    """The one-line help of a top-level command (what ``--help`` lists)."""
    return COMMANDS[name].help


def parse_eps(text: str) -> float:
    """``0.5``, ``8/255`` -> float pixels; negative, NaN and infinite values are refused."""
    return validate.eps(text)


def n_images(text: str) -> int | None:
    """A positive number of images, or ``all`` (None): :func:`~robust_transfer.models.finetune.parse_n`."""
    try:
        return parse_n(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def unfrozen_blocks(text: str) -> UnfrozenBlocks:
    """``0``, ``k`` or ``all``: :func:`~robust_transfer.models.finetune.parse_unfrozen`."""
    try:
        return parse_unfrozen(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", type=validate.device,
                        help="torch device: auto (CUDA if available, else CPU), cpu, cuda, cuda:1")


def add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", default=None,
                        help="folder holding datasets (default: $ROBUST_TRANSFER_DATA or "
                             "~/.cache/robust_transfer/data)")
    parser.add_argument("--download", action="store_true",
                        help="download missing torchvision datasets (needs the internet)")



def refuse_unused(args: argparse.Namespace, rules: dict[str, tuple[str, tuple, str]]) -> None:
    """Refuse options given where they do nothing, rather than ignore them.

    Args:
        args: parsed arguments; each option of ``rules`` has default ``None`` (so "given"
            can be told from "left at its default").
        rules: ``dest -> (other dest, the values of it the option needs, the flag that
            sets it)``, e.g. ``{"rcond": ("solver", ("pinv",), "--solver")}``.

    Raises:
        ConfigError: the first option given without what it needs.
    """
    for dest, (other, needs, flag) in rules.items():
        if getattr(args, dest) is not None and getattr(args, other) not in needs:
            option = "--" + dest.replace("_", "-")
            raise ConfigError(f"{option} does nothing with {flag} {getattr(args, other)}: it "
                              f"applies to {flag} {' or '.join(map(str, needs))} only; drop it "
                              f"or pass {flag} {needs[0]}")


def fill_defaults(args: argparse.Namespace, defaults: dict[str, object]) -> None:
    """Options left unset (``None``) take their defaults (after :func:`refuse_unused`)."""
    for dest, value in defaults.items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)


def add_force(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--force", action="store_true",
                        help=f"run even when {what} is above the stated bound (it may take hours)")


def require_within(size: float, bound: float, what: str, force: bool) -> None:
    """Refuse work whose size is above ``bound`` unless ``--force``.

    Raises:
        ConfigError: saying the size, the bound and the way past it.
    """
    if size > bound and not force:
        raise ConfigError(f"{what} is {size:,.0f}, above the bound of {bound:,.0f} this command "
                          "runs without asking (it could take hours with no end in sight); "
                          "ask for less, or pass --force to run it anyway")
