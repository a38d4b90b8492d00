"""``robust-transfer saliency``: input-gradient maps of fine-tuned models, side by side.

Takes fine-tuned checkpoints (``robust=PATH natural=PATH``) or study runs, computes loss
gradients with respect to the pixels of chosen images of their target, and prints where
the figure and arrays went.
"""

from __future__ import annotations

import argparse

import numpy as np

from robust_transfer.cli import validate as v
from robust_transfer.cli.common import add_force, command_help, require_within
from robust_transfer.cli.inputs import add_inputs, explain_inputs
from robust_transfer.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``saliency`` command."""
    p = subparsers.add_parser(
        "saliency", help=command_help("saliency"),
        description="Loss gradients with respect to the input pixels of chosen images "
        "(the paper's Fig. 4), optionally SmoothGrad. Writes saliency.png, gradients.npz "
        "and summary.json.")
    add_inputs(p, with_n=False)
    p.add_argument("--split", choices=("train", "test"), default="test",
                   help="split the images come from (default: test)")
    p.add_argument("--count", type=v.positive_int, default=8,
                   help="number of images, class-balanced and seeded (default: 8)")
    p.add_argument("--indices", default=None, metavar="I,J,...",
                   help="explicit image indices in the split (overrides --count)")
    p.add_argument("--smoothgrad", type=v.nonneg_int, default=0, metavar="SAMPLES",
                   help="SmoothGrad noisy copies per image; 0: plain gradient (default: 0)")
    p.add_argument("--sigma", type=v.nonneg_float, default=None,
                   help=f"SmoothGrad noise std in pixel units [0, 1] (default: {DEFAULT_SIGMA:g}; "
                   "needs --smoothgrad)")
    add_force(p, f"images x SmoothGrad samples (bound {MAX_GRADIENTS:,})")
    p.set_defaults(func=_saliency)


DEFAULT_SIGMA = 0.1
# input gradients per model without --force: one per image, or one per SmoothGrad sample
MAX_GRADIENTS = 20_000


def _check_options(args: argparse.Namespace) -> None:
    if args.sigma is not None and not args.smoothgrad:
        raise ConfigError("--sigma does nothing without --smoothgrad SAMPLES (plain gradients "
                          "add no noise); drop it or pass --smoothgrad")
    args.sigma = DEFAULT_SIGMA if args.sigma is None else args.sigma
    images = len(args.indices.split(",")) if args.indices else args.count
    require_within(images * max(1, args.smoothgrad), MAX_GRADIENTS,
                   "images x SmoothGrad samples (input gradients per model)", args.force)


def _saliency(args: argparse.Namespace) -> int:
    from robust_transfer.data import balanced_subset, load_dataset  # torch: not for --help
    from robust_transfer.saliency import explain_saliency

    _check_options(args)
    inputs = explain_inputs(args)
    data = load_dataset(inputs.dataset, args.split, root=args.data_root)
    if args.indices:
        indices = _parse_indices(args.indices, len(data))
    else:
        indices = balanced_subset(data.labels.numpy(), args.count, inputs.seed,
                                  f"{inputs.dataset}:{args.split}", what=f"{args.split} images",
                                  option="--count")
    summary = explain_saliency(inputs.models, data, indices, args.out, samples=args.smoothgrad,
                               sigma=args.sigma, seed=inputs.seed, overwrite=args.overwrite,
                               extra=inputs.provenance)
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
