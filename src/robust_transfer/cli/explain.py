"""``robust-transfer influence`` and ``robust-transfer saliency``: why robust sources transfer.

Both take one or more fine-tuned checkpoints (``robust=PATH natural=PATH``), a target
dataset and an output folder, call :mod:`robust_transfer.influence` or
:mod:`robust_transfer.saliency`, and print where the results went.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from robust_transfer.cli import validate as v
from robust_transfer.cli.common import n_images
from robust_transfer.errors import ConfigError

_DEFAULT_TEST_N = 500


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``influence`` and ``saliency`` commands."""
    _register_influence(subparsers)
    _register_saliency(subparsers)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", "-c", action="append", default=None, metavar="[NAME=]PATH",
                        help="a fine-tuned checkpoint, optionally named (e.g. robust=runs/r.safetensors); "
                        "repeat for side-by-side figures (default name: the file's stem)")
    parser.add_argument("--study", default=None, metavar="DIR",
                        help="a study directory: use --run instead of --checkpoint")
    parser.add_argument("--run", action="append", default=None, metavar="[NAME=]RUN_ID",
                        help="a finished run of --study (id or unique prefix), re-fine-tuned from its "
                        "stored config; repeat for side by side (e.g. robust=3fa2 natural=91bc)")
    parser.add_argument("--dataset", default=None,
                        help="target dataset the checkpoints were fine-tuned on (e.g. fmnist, digits); "
                        "with --run: the run's target")
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="dataset folder (default: $ROBUST_TRANSFER_DATA or the user cache)")
    parser.add_argument("--seed", type=v.seed, default=0,
                        help="seed of the image subsets, as in the study (default: 0)")
    parser.add_argument("--out", required=True, type=v.out_dir, metavar="DIR",
                        help="output folder; must not exist unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an existing output folder")


def _register_influence(subparsers: argparse._SubParsersAction) -> None:
    from robust_transfer.influence import SOLVERS, InfluenceConfig

    d = InfluenceConfig()
    p = subparsers.add_parser(
        "influence", help="last-layer influence functions: top-k images, class-match curves",
        description="Influence of every training image on every test image through the "
        "checkpoints' last layer (Koh & Liang; the paper's Figs. 5 and 6). Writes "
        "summary.json, class_match.png, influence_grid.png and <name>/influence.npz.")
    _add_common(p)
    p.add_argument("--n", type=n_images, default=None, metavar="N|all",
                   help="training images: the class-balanced subset the head was fine-tuned on "
                   "(default: all)")
    p.add_argument("--test-n", type=n_images, default=_DEFAULT_TEST_N, metavar="N|all",
                   help=f"test images, a class-balanced subset (default: {_DEFAULT_TEST_N}, "
                   f"or all when the test split is smaller)")
    p.add_argument("--damping", type=v.nonneg_float, default=d.damping,
                   help=f"lambda added to the Hessian's diagonal (default: {d.damping:g})")
    p.add_argument("--solver", choices=SOLVERS.names(), default=d.solver,
                   help="; ".join(f"{n}: {SOLVERS.get(n).description}" for n in SOLVERS.names()))
    p.add_argument("--rcond", type=v.finite_float, default=d.rcond,
                   help=f"pinv only: drop eigenvalues below rcond*max (default: {d.rcond:g}, the paper's)")
    p.add_argument("--no-train-targets", action="store_true",
                   help="skip training images as targets (no self-influence, no train curve)")
    p.add_argument("--top-k", type=v.positive_int, default=10, help="helpful/harmful images saved per test image")
    p.add_argument("--max-rank", type=v.positive_int, default=100, help="largest rank of the class-match curve")
    p.add_argument("--grid", type=v.positive_int, nargs=2, default=(6, 8), metavar=("ROWS", "COLS"),
                   help="test images and influential images per test image in the grid figure")
    p.add_argument("--batch-size", type=v.positive_int, default=256, help="images per forward pass")
    p.add_argument("--cg-tol", type=v.positive_float, default=d.cg_tol, help="cg only: relative residual")
    p.add_argument("--cg-max-iter", type=v.positive_int, default=d.cg_max_iter, help="cg only: iterations at most")
    p.add_argument("--cg-batch", type=v.positive_int, default=d.cg_batch, help="cg only: right-hand sides at once")
    p.add_argument("--memory-limit-gb", type=v.positive_float, default=None,
                   help="refuse problems estimated above this (default: the available memory)")
    p.set_defaults(func=_influence)


def _register_saliency(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "saliency", help="input-gradient maps, models side by side",
        description="Loss gradients with respect to the input pixels of chosen images "
        "(the paper's Fig. 4), optionally SmoothGrad. Writes saliency.png, gradients.npz "
        "and summary.json.")
    _add_common(p)
    p.add_argument("--split", choices=("train", "test"), default="test",
                   help="split the images come from (default: test)")
    p.add_argument("--count", type=v.positive_int, default=8,
                   help="number of images, class-balanced and seeded (default: 8)")
    p.add_argument("--indices", default=None, metavar="I,J,...",
                   help="explicit image indices in the split (overrides --count)")
    p.add_argument("--smoothgrad", type=v.nonneg_int, default=0, metavar="SAMPLES",
                   help="SmoothGrad noisy copies per image; 0: plain gradient (default: 0)")
    p.add_argument("--sigma", type=v.nonneg_float, default=0.1,
                   help="SmoothGrad noise std in pixel units [0, 1] (default: 0.1)")
    p.set_defaults(func=_saliency)


def _checkpoints(specs: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not name or not path:
            raise ConfigError(f"--checkpoint '{spec}' must be PATH or NAME=PATH")
        if name in out:
            raise ConfigError(f"two checkpoints are named '{name}'; name them NAME=PATH")
        out[name] = Path(path)
    return out


def _sources(args: argparse.Namespace) -> tuple[dict[str, Any], str, np.ndarray | None, dict]:
    """Models, target dataset, the runs' training indices (None for checkpoints), provenance."""
    if bool(args.checkpoint) == bool(args.run):
        raise ConfigError("give either --checkpoint PATH (repeatable) or --study DIR with --run ID")
    if args.checkpoint:
        if not args.dataset:
            raise ConfigError("--dataset is required with --checkpoint")
        return (_load_models(args.checkpoint), args.dataset, None,
                {"checkpoints": {k: str(v) for k, v in _checkpoints(args.checkpoint).items()}})
    if not args.study:
        raise ConfigError("--run needs --study DIR")
    return _replay_runs(args)


def _replay_runs(args: argparse.Namespace) -> tuple[dict[str, Any], str, np.ndarray | None, dict]:
    import sys

    from robust_transfer.study.replay import replay_run

    models, targets, indices, runs = {}, set(), None, {}
    for spec in args.run:
        name, sep, rid = spec.partition("=")
        name, rid = (name, rid) if sep else (spec, spec)
        replay = replay_run(args.study, rid, args.data_root)
        models[name] = replay.result.model
        targets.add(replay.config["target"])
        runs[name] = {"run_id": replay.run_id, "config": replay.config,
                      "stored_test_acc": replay.stored_test_acc,
                      "replayed_test_acc": replay.result.test_acc}
        print(f"replayed run {replay.run_id} ({name}): test acc {replay.result.test_acc:.4f}, "
              f"stored {replay.stored_test_acc:.4f}", file=sys.stderr)
        if indices is None or len(replay.result.train_indices) < len(indices):
            indices = replay.result.train_indices
    if len(targets) != 1:
        raise ConfigError(f"the runs have different targets ({', '.join(sorted(targets))}); "
                          "compare runs of one target")
    target = targets.pop()
    if args.dataset and args.dataset != target:
        raise ConfigError(f"--dataset {args.dataset} but the runs were fine-tuned on {target}")
    return models, target, indices, {"study": str(args.study), "runs": runs}


def _load_models(specs: list[str]) -> dict[str, Any]:
    # imported here: the checkpoint module is heavy and only these handlers need it
    from robust_transfer.models.checkpoints import load_model

    models = {}
    for name, path in _checkpoints(specs).items():
        loaded = load_model(path)
        models[name] = loaded[0] if isinstance(loaded, tuple) else loaded
    return models


def _influence(args: argparse.Namespace) -> int:
    from robust_transfer.data import balanced_subset, load_dataset
    from robust_transfer.influence import InfluenceConfig, explain_influence

    limit = None if args.memory_limit_gb is None else int(args.memory_limit_gb * 2**30)
    cfg = InfluenceConfig(damping=args.damping, solver=args.solver, rcond=args.rcond,
                          train_targets=not args.no_train_targets, cg_tol=args.cg_tol,
                          cg_max_iter=args.cg_max_iter, cg_batch=args.cg_batch,
                          memory_limit=limit)
    models, dataset, run_idx, provenance = _sources(args)
    train = load_dataset(dataset, "train", root=args.data_root)
    test = load_dataset(dataset, "test", root=args.data_root)
    # with --run, the training images are the (smallest) run's own subset
    train_idx = run_idx if run_idx is not None else balanced_subset(
        train.labels.numpy(), args.n, args.seed, dataset)
    test_n = None if args.test_n == _DEFAULT_TEST_N and len(test) <= _DEFAULT_TEST_N else args.test_n
    test_idx = balanced_subset(test.labels.numpy(), test_n, args.seed, f"{dataset}:test")
    extra = {"dataset": dataset, "seed": args.seed, "n": len(train_idx), "test_n": args.test_n,
             **provenance}
    summary = explain_influence(
        models, train.subset(train_idx), test.subset(test_idx), args.out, cfg,
        overwrite=args.overwrite, batch_size=args.batch_size, top=args.top_k,
        max_rank=args.max_rank, grid_size=tuple(args.grid), train_indices=train_idx,
        test_indices=test_idx, extra=extra)
    for name, rec in summary["models"].items():
        print(_influence_line(name, rec))
    print(f"wrote {args.out}/summary.json, class_match.png, influence_grid.png, <name>/influence.npz")
    return 0


def _influence_line(name: str, rec: dict[str, Any]) -> str:
    parts = [f"{name}: solver {rec['solver']}, damping {rec['damping']:g}"]
    for kind in ("test", "train"):
        m = rec.get(f"top1_class_match_{kind}")
        if m:
            parts.append(f"top-1 class match ({kind} targets) {m['share']:.1%} "
                         f"[{m['low']:.1%}, {m['high']:.1%}]")
    parts.append(f"{rec['timings_s']['total_s'] + rec['timings_s'].get('features_s', 0):.1f} s")
    return "; ".join(parts)


def _saliency(args: argparse.Namespace) -> int:
    from robust_transfer.data import balanced_subset, load_dataset
    from robust_transfer.saliency import explain_saliency

    models, dataset, _, extra = _sources(args)
    data = load_dataset(dataset, args.split, root=args.data_root)
    if args.indices:
        indices = _parse_indices(args.indices, len(data))
    else:
        indices = balanced_subset(data.labels.numpy(), args.count, args.seed,
                                  f"{dataset}:{args.split}")
    summary = explain_saliency(models, data, indices, args.out, samples=args.smoothgrad,
                               sigma=args.sigma, seed=args.seed, overwrite=args.overwrite,
                               extra=extra)
    print(f"saliency of {summary['n_images']} {args.split} images under "
          f"{', '.join(summary['models'])}: wrote {args.out}/saliency.png, gradients.npz, summary.json")
    return 0


def _parse_indices(text: str, size: int) -> np.ndarray:
    try:
        idx = np.array([int(t) for t in text.split(",") if t.strip()], dtype=np.int64)
    except ValueError:
        raise ConfigError(f"--indices must be comma-separated integers, got '{text}'") from None
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= size:
        raise ConfigError(f"--indices must lie in 0..{size - 1}, got '{text}'")
    return idx
