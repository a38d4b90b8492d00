"""``data list``: the datasets this machine knows and has."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list datasets and where their files are expected")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    lp = dsub.add_parser("list", help="registered datasets: classes, channels, size, available here")
    lp.add_argument("--data-root", default=None,
                    help="folder holding datasets (default: $ROBUST_TRANSFER_DATA or "
                         "~/.cache/robust_transfer/data)")
    lp.set_defaults(func=_list)
    fp = dsub.add_parser("fetch", help="download a torchvision dataset (both splits) into the data root")
    fp.add_argument("name", help="dataset name (see `robust-transfer data list`)")
    fp.add_argument("--data-root", default=None,
                    help="folder to download into (default: $ROBUST_TRANSFER_DATA or "
                         "~/.cache/robust_transfer/data)")
    fp.set_defaults(func=_fetch)


def _list(args) -> int:
    from robust_transfer.data import DATASETS, data_root, dataset_available

    print(f"data root: {data_root(args.data_root)}")
    print(f"{'name':<10} {'classes':>7} {'ch':>3} {'size':>4}  {'here':<4}  description")
    for name in DATASETS.names():
        info = DATASETS.get(name).info
        here = "yes" if dataset_available(name, args.data_root) else "no"
        print(f"{name:<10} {info.num_classes:>7} {info.channels:>3} {info.size:>4}  {here:<4}  "
              f"{info.description}")
    print("folder:PATH  your own images: PATH/train/<class>/*.png and PATH/test/<class>/*.png")
    return 0


def _fetch(args) -> int:
    from robust_transfer.data import data_root, load_dataset
    from robust_transfer.progress import Progress

    for split in ("train", "test"):
        # start, end and a line every interval off a terminal (no byte counts yet)
        with Progress(f"data fetch {args.name} {split}", unit="files"):
            data = load_dataset(args.name, split, args.data_root, download=True)
        print(f"{args.name} {split}: {len(data)} images in {data.source or data_root(args.data_root)}")
    return 0
