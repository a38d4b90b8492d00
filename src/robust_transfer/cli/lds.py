"""``robust-transfer lds``: how well each influence method predicts retraining (the LDS).

Takes finished study runs, fine-tunes each again, scores its training images with each
method, retrains on random subsets with the run's recipe and prints the linear
datamodeling score with its interval over test images; writes ``summary.json``.
"""

from __future__ import annotations

import argparse
import math

from robust_transfer.cli import validate as v
from robust_transfer.cli.common import command_help, n_images
from robust_transfer.outputs import prepare_output_dir, write_json
from robust_transfer.progress import Progress

# LDSConfig's defaults, restated so that the parser imports no torch (--help answers at
# once); tests/influence/test_influence_lds.py checks that they agree
DEFAULT_SUBSETS, DEFAULT_FRACTION, DEFAULT_SEED = 50, 0.5, 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``lds`` command."""
    p = subparsers.add_parser(
        "lds", help=command_help("lds"),
        description="Linear datamodeling score (TRAK's LDS) of influence methods on study runs: "
        "retrain on random subsets, correlate each method's predicted test margins with the "
        "actual ones (Spearman over subsets, mean over test images, 95%% t-interval).")
    p.add_argument("--study", required=True, metavar="DIR", help="a study directory")
    p.add_argument("--run", action="append", required=True, metavar="RUN_ID",
                   help="a finished run (id or unique prefix); repeat for several")
    p.add_argument("--method", action="append", default=None, metavar="NAME",
                   help="attribution method, e.g. exact-head, kfac-head, ekfac-head, ekfac-blocks "
                   "(an unknown name lists them all); repeat (default: all; through-blocks "
                   "methods are skipped on head-only runs)")
    p.add_argument("--subsets", type=v.positive_int, default=DEFAULT_SUBSETS,
                   help=f"subsets retrained (default: {DEFAULT_SUBSETS}; at least 3)")
    p.add_argument("--fraction", type=v.open_unit, default=DEFAULT_FRACTION,
                   help=f"share of the run's training images per subset, in (0, 1) "
                   f"(default: {DEFAULT_FRACTION:g}, random halves)")
    p.add_argument("--test-n", type=n_images, default=None, metavar="N|all",
                   help="test images scored, class-balanced (default: all)")
    p.add_argument("--seed", type=v.seed, default=DEFAULT_SEED, help="seed of the subsets (default: 0)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="dataset folder")
    p.add_argument("--out", required=True, type=v.out_dir, metavar="DIR",
                   help="output folder for summary.json; must not exist unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="write into an existing output folder")
    p.set_defaults(func=_lds)


def _lds(args: argparse.Namespace) -> int:
    from robust_transfer.influence.lds import METHODS, LDSConfig, lds_for_run, lds_table
    from robust_transfer.study.replay import run_source

    for name in args.method or ():
        METHODS.get(name)  # an unknown name is refused with the valid ones
    cfg = LDSConfig(subsets=args.subsets, fraction=args.fraction, seed=args.seed,
                    test_n=args.test_n)
    if args.out.exists() and not args.overwrite:
        prepare_output_dir(args.out, False)  # refuse now, before the retraining
    runs = {spec: run_source(args.study, spec) for spec in args.run}
    results = {}
    for rid, config, source in runs.values():
        label = f"{rid[:8]} {config.source} n={config.n_label} unfrozen={config.unfrozen_blocks}"
        with Progress(f"lds {rid[:8]}", unit="subsets") as progress:
            results[label] = lds_for_run(config, source, args.method, cfg, args.data_root, progress)
    rows = lds_table(results)
    for row in rows:
        print(_row_line(row))
    out = prepare_output_dir(args.out, overwrite=True)
    write_json(out / "summary.json", {"config": vars(cfg), "study": str(args.study), "rows": rows,
                                      "runs": {k: {"test_acc": r.test_acc, "seconds": r.seconds,
                                                   "subset_test_acc": r.subset_test_acc}
                                               for k, r in results.items()}})
    print(f"wrote {args.out}/summary.json")
    return 0


def _row_line(row: dict) -> str:
    if "skipped" in row:
        return f"{row['run']}  {row['method']}: skipped ({row['skipped']})"
    interval = "" if math.isnan(row["low"]) else f" [{row['low']:.3f}, {row['high']:.3f}]"
    return (f"{row['run']}  {row['method']}: LDS {row['lds']:.3f}{interval} over {row['n_test']} "
            f"test images, {row['subsets']} subsets")
