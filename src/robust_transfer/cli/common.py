"""Helpers shared by the command modules: parsing values, progress bars."""

from __future__ import annotations

import argparse
import sys

from robust_transfer.cli import validate

# the argument types live in cli/validate.py; these names are kept for the command modules
parse_eps = validate.eps
positive_int = validate.positive_int
n_images = validate.n_images


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", type=validate.device,
                        help="torch device: auto (CUDA if available, else CPU), cpu, cuda, cuda:1")


def add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", default=None,
                        help="folder holding datasets (default: $ROBUST_TRANSFER_DATA or "
                             "~/.cache/robust_transfer/data)")
    parser.add_argument("--download", action="store_true",
                        help="download missing torchvision datasets (needs the internet)")


class Progress:
    """A tqdm progress bar fed by the library's ``callback(event, info)``."""

    def __init__(self, desc: str, bars: bool | None = None) -> None:
        # bars only on a terminal; the per-epoch lines always
        self.desc, self.bar = desc, None
        self.bars = sys.stderr.isatty() if bars is None else bars

    def __call__(self, event: str, info: dict) -> None:
        from tqdm import tqdm

        if event == "batch" and self.bars:
            if self.bar is None:
                self.bar = tqdm(total=info["batches"], desc=self.desc, leave=False, file=sys.stderr)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{info['loss']:.3f}")
        elif event == "epoch":
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            msg = (f"{self.desc} epoch {info['epoch']}: lr {info['lr']:.4g} "
                   f"train loss {info['train_loss']:.4f} acc {info['train_acc']:.4f}")
            if info["test_acc"] == info["test_acc"]:
                msg += f" | test acc {info['test_acc']:.4f}"
            if info.get("robust_acc") == info.get("robust_acc"):
                msg += f" robust acc {info['robust_acc']:.4f}"
            print(msg, file=sys.stderr)
