"""Fine-tuning with 0 unfrozen blocks against the same run with a full backward pass.

Three runs of :func:`robust_transfer.engine.transfer.finetune`, same source, target images, seed
and recipe (no augmentation, so the frozen prefix can be cached):

* ``head, cached``: 0 unfrozen blocks; the frozen backbone runs once per image, without
  autograd, and the epochs train the head on the cached features (the library's default).
* ``head, no cache``: 0 unfrozen blocks with the cache switched off; every epoch runs the
  backbone forward without autograd, then the head.
* ``all blocks``: every block unfrozen; every epoch runs forward and backward through the
  whole network.

Per-epoch time is the median over the epochs that do not evaluate (the test split is
evaluated only at the last). The cached run's one-off feature extraction is reported
separately and in the whole-run ratio.

Target (issue 2): 0 unfrozen blocks at least 3x faster per epoch than the full backward pass.

Usage:
    .venv/bin/python benchmarks/bench_finetune.py [--threads 1] [--n 2000] [--epochs 4]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

import robust_transfer
from robust_transfer.data import load_dataset
from robust_transfer.engine import transfer
from robust_transfer.engine.transfer import Recipe, finetune
from robust_transfer.models import build_architecture

EMBEDDED = Path(robust_transfer.__file__).parent / "zoo" / "fmnist-natural"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default=None,
                   help="source checkpoint (default: the embedded fmnist-natural, else a randomly "
                        "initialised small_resnet at 28 px: timing does not depend on the weights)")
    p.add_argument("--target", default="fmnist",
                   help="target dataset (default fmnist; digits when Fashion-MNIST is absent)")
    p.add_argument("--n", type=int, default=2000, help="training images")
    p.add_argument("--test-images", type=int, default=1000, help="test images")
    p.add_argument("--epochs", type=int, default=4, help="epochs (at least 2)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default torch's; on a machine shared with other "
                        "jobs, 1 gives steadier timings)")
    return p.parse_args()


def load_source(path: str | None):
    if path is None and EMBEDDED.with_suffix(".safetensors").is_file():
        path = str(EMBEDDED)
    if path:
        from robust_transfer.models.checkpoints import load_model

        return load_model(path)[0], path
    torch.manual_seed(0)
    return build_architecture("small_resnet", 10, input_size=28), "small_resnet (random init), 28 px"


def load_target(name: str, test_images: int):
    try:
        train, test = load_dataset(name, "train"), load_dataset(name, "test")
    except robust_transfer.RobustTransferError:
        name = "digits"
        train, test = load_dataset(name, "train"), load_dataset(name, "test")
    return train, test.subset(torch.arange(min(test_images, len(test)))), name


def timed_run(source, train, test, args, unfrozen, cache: bool) -> dict:
    limit = transfer.PREFIX_MEMORY_LIMIT
    transfer.PREFIX_MEMORY_LIMIT = limit if cache else 0
    try:
        recipe = Recipe(batch_size=args.batch_size, augment=False, eval_every=args.epochs)
        result = finetune(source, train, test, n=args.n, unfrozen=unfrozen, epochs=args.epochs,
                          seed=0, recipe=recipe, device="cpu")
    finally:
        transfer.PREFIX_MEMORY_LIMIT = limit
    epochs = [h.seconds for h in result.history]
    return {"epoch": statistics.median(epochs[:-1]), "total": result.seconds,
            "setup": result.seconds - sum(epochs), "acc": result.test_acc,
            "cached": result.cached_prefix}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2 (the last one also evaluates)")
    source, described = load_source(args.source)
    train, test, target = load_target(args.target, args.test_images)
    print(f"source: {described}; target {target}, n={args.n}, {len(test)} test images, "
          f"{args.epochs} epochs, batch {args.batch_size}, {torch.get_num_threads()} thread(s)")
    runs = {
        "head, cached": timed_run(source, train, test, args, 0, cache=True),
        "head, no cache": timed_run(source, train, test, args, 0, cache=False),
        "all blocks": timed_run(source, train, test, args, "all", cache=False),
    }
    assert runs["head, cached"]["cached"] and not runs["head, no cache"]["cached"]
    full = runs["all blocks"]
    print(f"{'run':<16}{'s/epoch':>10}{'x faster':>10}{'setup s':>9}{'total s':>9}"
          f"{'x faster':>10}{'test acc':>10}")
    for name, r in runs.items():
        print(f"{name:<16}{r['epoch']:>10.3f}{full['epoch'] / r['epoch']:>10.1f}{r['setup']:>9.2f}"
              f"{r['total']:>9.2f}{full['total'] / r['total']:>10.1f}{r['acc']:>10.3f}")
    print(f"per-epoch speed-up of 0 unfrozen blocks over the full backward pass: "
          f"{full['epoch'] / runs['head, cached']['epoch']:.1f}x cached, "
          f"{full['epoch'] / runs['head, no cache']['epoch']:.1f}x without the cache (target >= 3)")


if __name__ == "__main__":
    main()
