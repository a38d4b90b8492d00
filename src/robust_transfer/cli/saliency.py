"""``robust-transfer saliency``: input-gradient maps of fine-tuned models, side by side.

Takes fine-tuned checkpoints (``robust=PATH natural=PATH``) or study runs, computes loss
gradients with respect to the pixels of chosen images of their target, and prints where
the figure and arrays went.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import numpy as np

from robust_transfer.cli import validate as v
from robust_transfer.cli.common import add_force, command_help, require_within
from robust_transfer.cli.inputs import add_inputs, explain_inputs
from robust_transfer.errors import ConfigError

if TYPE_CHECKING:
    from robust_transfer.saliency import SaliencyConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``saliency`` command."""
    p = subparsers.add_parser(
        "saliency", help=command_help("saliency"),
        description="Attributions of chosen images' losses to their input pixels through "
        "captum (the paper's Fig. 4: the input gradient; or SmoothGrad, or integrated "
        "gradients). Writes saliency.png, gradients.npz and summary.json.")
    add_inputs(p, with_n=False)
    p.add_argument("--split", choices=("train", "test"), default="test",
                   help="split the images come from (default: test)")
    p.add_argument("--count", type=v.positive_int, default=8,
                   help="number of images, class-balanced and seeded (default: 8)")
    p.add_argument("--indices", default=None, metavar="I,J,...",
                   help="explicit image indices in the split (overrides --count)")
    p.add_argument("--method", choices=METHOD_NAMES, default=None,
                   help="captum's attribution of each image's loss: saliency (the input gradient, "
                   "Fig. 4; default), smoothgrad (NoiseTunnel around Saliency) or "
                   "integrated-gradients (from --baseline)")
    p.add_argument("--smoothgrad", type=v.nonneg_int, default=0, metavar="SAMPLES",
                   help="SmoothGrad noisy copies per image (implies --method smoothgrad; default "
                   f"with --method smoothgrad: {DEFAULT_SAMPLES}); 0: plain gradient")
    p.add_argument("--sigma", type=v.nonneg_float, default=None,
                   help=f"SmoothGrad noise std in pixel units [0, 1] (default: {DEFAULT_SIGMA:g}; "
                   "only with --method smoothgrad or --smoothgrad)")
    p.add_argument("--steps", type=v.positive_int, default=DEFAULT_STEPS,
                   help=f"integrated-gradients: points along the path (default: {DEFAULT_STEPS})")
    p.add_argument("--baseline", default=None, metavar="GREY|FILE.npy",
                   help="integrated-gradients: a grey level in [0, 1] or a .npy image of the model "
                   "input's shape [C, H, W] (default: 0, black)")
    add_force(p, f"images x gradients per image (bound {MAX_GRADIENTS:,})")
    p.set_defaults(func=_saliency)


DEFAULT_SIGMA = 0.1
# robust_transfer.saliency's METHODS and SaliencyConfig defaults, restated so that the parser
# imports no torch (--help answers at once); tests/test_saliency.py checks that they agree
METHOD_NAMES = ("saliency", "smoothgrad", "integrated-gradients")
DEFAULT_SAMPLES, DEFAULT_STEPS = 25, 50
# input gradients per model without --force: one per image, per SmoothGrad sample or per
# integrated-gradients step
MAX_GRADIENTS = 20_000


def _check_options(args: argparse.Namespace, method: str, samples: int) -> None:
    if args.sigma is not None and method != "smoothgrad":
        raise ConfigError("--sigma does nothing without SmoothGrad (plain gradients add no "
                          "noise); drop it or pass --method smoothgrad / --smoothgrad SAMPLES")
    images = len(args.indices.split(",")) if args.indices else args.count
    per_image = {"smoothgrad": samples, "integrated-gradients": args.steps}.get(method, 1)
    require_within(images * per_image, MAX_GRADIENTS,
                   "images x gradients per image (input gradients per model)", args.force)


def _saliency(args: argparse.Namespace) -> int:
    from robust_transfer.data import balanced_subset, load_dataset  # torch: not for --help
    from robust_transfer.saliency import explain_saliency

    config = _config(args)
    inputs = explain_inputs(args)
    data = load_dataset(inputs.dataset, args.split, root=args.data_root)
    if args.indices:
        indices = _parse_indices(args.indices, len(data))
    else:
        indices = balanced_subset(data.labels.numpy(), args.count, inputs.seed,
                                  f"{inputs.dataset}:{args.split}", what=f"{args.split} images",
                                  option="--count")
    summary = explain_saliency(inputs.models, data, indices, args.out, seed=inputs.seed,
                               overwrite=args.overwrite, extra=inputs.provenance, config=config)
    print(f"saliency of {summary['n_images']} {args.split} images under "
          f"{', '.join(summary['models'])} ({summary['method']}): wrote {args.out}/saliency.png, "
          "gradients.npz, summary.json")
    return 0


def _config(args: argparse.Namespace) -> SaliencyConfig:
    from robust_transfer.saliency import SaliencyConfig

    method = args.method or ("smoothgrad" if args.smoothgrad else "saliency")
    if args.smoothgrad and method != "smoothgrad":
        raise ConfigError(f"--smoothgrad applies to --method smoothgrad, not {method}")
    samples = args.smoothgrad or SaliencyConfig.samples
    _check_options(args, method, samples)
    sigma = DEFAULT_SIGMA if args.sigma is None else args.sigma
    return SaliencyConfig(method, samples=samples, sigma=sigma, steps=args.steps,
                          baseline=_baseline(args.baseline))


def _baseline(text: str | None) -> float | np.ndarray | None:
    """``--baseline``: a grey level, or a .npy file (its shape is checked against the model)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return np.load(text, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--baseline must be a grey level in [0, 1] or a .npy image file; "
                          f"cannot read '{text}' ({err})") from None


def _parse_indices(text: str, size: int) -> np.ndarray:
    try:
        idx = np.array([int(t) for t in text.split(",") if t.strip()], dtype=np.int64)
    except ValueError:
        raise ConfigError(f"--indices must be comma-separated integers, got '{text}'") from None
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= size:
        raise ConfigError(f"--indices must lie in 0..{size - 1}, got '{text}'")
    return idx
