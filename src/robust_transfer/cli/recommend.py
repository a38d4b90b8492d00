"""``recommend``: which source model to fine-tune for a target, from head-only probes."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recommend", help="rank source models for a target by head-only probes "
                       "on a held-out validation set (never the test set)",
                       description="Rank source models for a target without fine-tuning them all: "
                       "each source gets head-only probes (a linear head on its frozen features) "
                       "trained on --n class-balanced images, scored on validation images held "
                       "out of the training pool, paired by seed. The test set is never used.")
    p.add_argument("--target", required=True,
                   help="dataset name (see `data list`) or folder:PATH with train/<class>/ images")
    p.add_argument("--n", type=int, required=True, help="training images per probe (class-balanced)")
    p.add_argument("--source", action="append", dest="sources", metavar="NAME_OR_PATH",
                   help="a source to rank (repeat; default: every source on this machine)")
    p.add_argument("--seeds", type=int, default=3, help="probes per source, paired by seed (default 3)")
    p.add_argument("--val-images", type=int, default=None,
                   help="validation images held out of the training pool (default: a quarter, "
                        "at most 1,000)")
    p.add_argument("--data-root", default=None, help="folder holding datasets")
    p.add_argument("--device", default="cpu", help="where features are computed (cpu, cuda, auto)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from robust_transfer.errors import ConfigError
    from robust_transfer.recommend import recommend

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if args.n < 1:
        raise ConfigError(f"--n must be positive, got {args.n}")
    rec = recommend(args.target, args.n, args.sources, seeds=tuple(range(args.seeds)),
                    val_images=args.val_images, data_root=args.data_root, device=args.device)
    print(f"{rec.target}, n={rec.n}: head-only probes, {len(rec.seeds)} seeds, "
          f"{rec.val_images} validation images held out of the training pool")
    print(f"{'rank':>4}  {'source':<28} {'val acc':>8}  {'95% CI':<15} {'vs best':>8}  {'95% CI':<15}")
    for row in rec.to_rows():
        ci = f"{row['lo']:.1%}-{row['hi']:.1%}" if row["lo"] == row["lo"] else "-"
        gap = "-" if row["rank"] == 1 else f"{row['gap_to_best']:+.1%}"
        gci = ("-" if row["rank"] == 1 or row["gap_lo"] != row["gap_lo"]
               else f"{row['gap_lo']:+.1%} {row['gap_hi']:+.1%}")
        print(f"{row['rank']:>4}  {row['source']:<28} {row['mean']:>8.1%}  {ci:<15} {gap:>8}  {gci:<15}")
    for name, why in rec.skipped.items():
        print(f"skipped {name}: {why}")
    print(rec.verdict())
    return 0
