"""``robust-transfer influence``: which training images drive each test prediction, and why.

Takes fine-tuned checkpoints (``robust=PATH natural=PATH``) or study runs, scores every
training image's influence on every test image through the last layer, and prints where
the results went. The training images are those the checkpoints were fine-tuned on.
"""

from __future__ import annotations

import argparse
from typing import Any

from robust_transfer.cli import validate as v
from robust_transfer.cli.common import (
    add_force,
    command_help,
    fill_defaults,
    n_images,
    refuse_unused,
    require_within,
)
from robust_transfer.cli.inputs import add_inputs, explain_inputs
from robust_transfer.data import balanced_subset, load_dataset
from robust_transfer.influence import SOLVERS, InfluenceConfig, config_fields, explain_influence
from robust_transfer.influence.forms import FORMS
from robust_transfer.influence.solvers import PRECISIONS
from robust_transfer.influence.streaming import SCORE_MODES
from robust_transfer.progress import Progress

_DEFAULT_TEST_N = 500
# images drawn in the grid figure (rows x columns per model) without --force: 6 x 8 is the
# default; matplotlib takes minutes for 200 x 200
MAX_GRID_CELLS = 600
# options that do nothing unless another one has a given value
_ONLY_WITH = {"rcond": ("solver", ("pinv",), "--solver"),
              "cg_tol": ("solver", ("cg",), "--solver"),
              "cg_max_iter": ("solver", ("cg",), "--solver"),
              "cg_batch": ("solver", ("cg",), "--solver"),
              "refine_tol": ("precision", ("mixed",), "--precision"),
              "refine_max_iter": ("precision", ("mixed",), "--precision")}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``influence`` command."""
    d = InfluenceConfig()
    p = subparsers.add_parser(
        "influence", help=command_help("influence"),
        description="Influence of every training image on every test image through the "
        "checkpoints' last layer (Koh & Liang; the paper's Figs. 5 and 6). Writes "
        "summary.json, class_match.png, influence_grid.png and <name>/influence.npz.")
    add_inputs(p, with_n=True)
    fields = {f.name: f for f in config_fields()}  # help text lives on InfluenceConfig
    p.add_argument("--test-n", type=n_images, default=_DEFAULT_TEST_N, metavar="N|all",
                   help=f"test images, a class-balanced subset (default: {_DEFAULT_TEST_N}, "
                   f"or all when the test split is smaller)")
    p.add_argument("--damping", type=v.nonneg_float, default=d.damping,
                   help=f"{fields['damping'].help} (default: {d.damping:g})")
    p.add_argument("--solver", choices=SOLVERS.names(), default=d.solver,
                   help="; ".join(f"{n}: {SOLVERS.get(n).description}" for n in SOLVERS.names()))
    p.add_argument("--rcond", type=v.finite_float, default=None,
                   help=f"pinv only: drop eigenvalues below rcond*max (default: {d.rcond:g}, the paper's)")
    p.add_argument("--no-train-targets", action="store_true",
                   help="skip training images as targets (no self-influence, no train curve)")
    p.add_argument("--top-k", type=v.positive_int, default=10, help="helpful/harmful images saved per test image")
    p.add_argument("--max-rank", type=v.positive_int, default=100, help="largest rank of the class-match curve")
    p.add_argument("--grid", type=v.positive_int, nargs=2, default=(6, 8), metavar=("ROWS", "COLS"),
                   help="test images and influential images per test image in the grid figure")
    p.add_argument("--batch-size", type=v.positive_int, default=256, help="images per forward pass")
    p.add_argument("--cg-tol", type=v.positive_float, default=None, help=fields["cg_tol"].help)
    p.add_argument("--cg-max-iter", type=v.positive_int, default=None,
                   help=fields["cg_max_iter"].help)
    p.add_argument("--cg-batch", type=v.positive_int, default=None,
                   help=fields["cg_batch"].help)
    p.add_argument("--form", choices=FORMS, default=d.form, help=fields["form"].help)
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help=fields["precision"].help)
    p.add_argument("--refine-tol", type=v.positive_float, default=None,
                   help=fields["refine_tol"].help)
    p.add_argument("--refine-max-iter", type=v.positive_int, default=None,
                   help=fields["refine_max_iter"].help)
    p.add_argument("--memory-limit-gb", type=v.positive_float, default=None,
                   help="refuse problems estimated above this (default: the available memory)")
    p.add_argument("--time-budget-s", type=v.positive_float, default=d.time_budget_s,
                   help=fields["time_budget_s"].help + f" (default: {d.time_budget_s:g})")
    p.add_argument("--scores", choices=SCORE_MODES, default=d.scores, help=fields["scores"].help)
    add_force(p, f"the grid figure (ROWS x COLS, bound {MAX_GRID_CELLS})")
    p.set_defaults(func=_influence)


def _check_options(args: argparse.Namespace) -> None:
    """Options that would do nothing, and a grid figure too large to draw, are refused."""
    refuse_unused(args, _ONLY_WITH)
    d = InfluenceConfig()
    fill_defaults(args, {dest: getattr(d, dest) for dest in _ONLY_WITH})
    rows, cols = args.grid
    require_within(rows * cols, MAX_GRID_CELLS, f"--grid {rows} {cols} (images per model "
                   "in influence_grid.png)", args.force)


def _influence(args: argparse.Namespace) -> int:
    _check_options(args)
    limit = None if args.memory_limit_gb is None else int(args.memory_limit_gb * 2**30)
    cfg = InfluenceConfig(damping=args.damping, solver=args.solver, rcond=args.rcond,
                          train_targets=not args.no_train_targets, cg_tol=args.cg_tol,
                          cg_max_iter=args.cg_max_iter, cg_batch=args.cg_batch,
                          memory_limit=limit, form=args.form, precision=args.precision,
                          refine_tol=args.refine_tol, refine_max_iter=args.refine_max_iter,
                          time_budget_s=args.time_budget_s, scores=args.scores,
                          top_k=max(args.top_k, args.grid[1]), max_rank=args.max_rank)
    inputs = explain_inputs(args)
    train = load_dataset(inputs.dataset, "train", root=args.data_root)
    test = load_dataset(inputs.dataset, "test", root=args.data_root)
    # the training images the heads saw: a run's own subset, or the checkpoints' n and seed
    train_idx = inputs.train_indices if inputs.train_indices is not None else balanced_subset(
        train.labels.numpy(), inputs.n, inputs.seed, inputs.dataset)
    test_n = None if args.test_n == _DEFAULT_TEST_N and len(test) <= _DEFAULT_TEST_N else args.test_n
    test_idx = balanced_subset(test.labels.numpy(), test_n, inputs.seed, f"{inputs.dataset}:test",
                               what="test images", option="--test-n")
    extra = {"dataset": inputs.dataset, "seed": inputs.seed, "n": len(train_idx),
             "test_n": args.test_n, **inputs.provenance}
    # the solver's steps (class blocks, passes over test rows, ...) over all models
    with Progress("influence", unit="steps") as progress:
        summary = explain_influence(
            inputs.models, train.subset(train_idx), test.subset(test_idx), args.out, cfg,
            overwrite=args.overwrite, batch_size=args.batch_size, callback=progress, top=args.top_k,
            max_rank=args.max_rank, grid_size=tuple(args.grid), train_indices=train_idx,
            test_indices=test_idx, extra=extra)
    for name, rec in summary["models"].items():
        print(_influence_line(name, rec))
    print(f"wrote {args.out}/summary.json, class_match.png, influence_grid.png, <name>/influence.npz")
    return 0


def _influence_line(name: str, rec: dict[str, Any]) -> str:
    parts = [f"{name}: solver {rec['solver']}, damping {rec['damping']:g}, " + _form_words(rec)]
    for kind in ("test", "train"):
        m = rec.get(f"top1_class_match_{kind}")
        if m:
            parts.append(f"top-1 class match ({kind} targets) {m['share']:.1%} "
                         f"[{m['low']:.1%}, {m['high']:.1%}]")
    parts.append(f"{rec['timings_s']['total_s'] + rec['timings_s'].get('features_s', 0):.1f} s")
    return "; ".join(parts)


def _form_words(rec: dict[str, Any]) -> str:
    """``form block (exact)`` or ``form kfac (approximate: why), scores streamed (...)``."""
    words = f"form {rec['form']} " + ("(exact)" if rec.get("exact", True)
                                      else f"(approximate: {rec.get('form_reason')})")
    return words + (", scores streamed (top-k, curves, self-influence)"
                    if rec.get("scores") == "stream" else "")
