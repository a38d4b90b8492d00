"""Our PGD (L2, Linf) against torchattacks' PGDL2 and PGD, side by side on the CPU.

Both attack the same function: our model holds its normaliser, so torchattacks gets
pixels in [0, 1] as we do and needs no ``set_normalization_used``. Same model, images,
eps, steps, step size (2.5 * eps / steps) and random-start setting; both run the model in
eval mode.

* Throughput: one batch attacked ``--repeats`` times by each, alternating which goes
  first; the best of the repeats (as timeit: load from other processes only adds time),
  with the median ratio printed beside it.
* Attack success (1 - robust accuracy) on ``--success-images`` test images. Without a
  random start both compute the same iterates. With one, the starts differ: ours is the
  robustness library's (a point on the L2 sphere, uniform in the Linf box), torchattacks'
  PGDL2 draws a radius uniformly inside the ball. A last row runs ours from torchattacks'
  kind of L2 start, to separate the start's effect from the implementations'.

Targets (issue 2): throughput ratio ours / torchattacks >= 1.0; attack success within 1 point.

Usage:
    .venv/bin/python benchmarks/bench_attacks.py [--threads 1] [--model CHECKPOINT]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import robust_transfer
from robust_transfer.data import InputPolicy, load_dataset
from robust_transfer.engine import attacks as rt_attacks
from robust_transfer.engine.attacks import pgd
from robust_transfer.engine.training import FitOptions, OptimConfig, TensorLoader, fit
from robust_transfer.models import build_architecture

EPS = {"l2": 0.5, "linf": 8 / 255}
EMBEDDED = Path(robust_transfer.__file__).parent / "zoo" / "fmnist-natural"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None,
                   help="checkpoint to attack (default: the embedded zoo's fmnist-natural, else a "
                        "small_resnet trained here for two epochs on 6,000 Fashion-MNIST images, "
                        "or on digits when Fashion-MNIST is absent)")
    p.add_argument("--batch", type=int, default=128, help="images per timed attack call")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per implementation")
    p.add_argument("--success-images", type=int, default=1000,
                   help="test images for the attack-success comparison")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default torch's; on a machine shared with other "
                        "jobs, 1 gives steadier timings)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def source_model(path: str | None, seed: int):
    """(model, its dataset's name, a description)."""
    if path is None and EMBEDDED.with_suffix(".safetensors").is_file():
        path = str(EMBEDDED)
    if path:
        from robust_transfer.models.checkpoints import load_model

        model, meta = load_model(path)
        return model, meta.get("source_dataset", "fmnist"), path
    try:
        train, name = load_dataset("fmnist", "train"), "fmnist"
    except robust_transfer.RobustTransferError:  # no Fashion-MNIST here: the bundled digits
        train, name = load_dataset("digits", "train"), "digits"
    size = 28 if name == "fmnist" else 16
    torch.manual_seed(seed)
    model = build_architecture("small_resnet", 10, mean=(0.3,) * 3, std=(0.35,) * 3, input_size=size)
    train = train.subset(torch.randperm(len(train))[:6000])
    loader = TensorLoader(train.images, train.labels, 128, shuffle=True,
                          transform=InputPolicy(3, size).prepare, seed=seed)
    options = FitOptions(epochs=2, optim=OptimConfig(lr=0.05, schedule="cosine"), device="cpu")
    fit(model, loader, None, options)
    return model.eval(), name, f"small_resnet, 2 epochs on {len(train)} {name} images"


def attacks(model, norm: str, steps: int, random_start: bool) -> dict:
    """name -> callable(x, y) returning adversarial images."""
    import torchattacks

    eps = EPS[norm]
    alpha = 2.5 * eps / steps
    cls = torchattacks.PGDL2 if norm == "l2" else torchattacks.PGD
    theirs = cls(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    return {
        "ours": lambda x, y: pgd(model, x, y, norm, eps, steps, alpha, random_init=random_start),
        "torchattacks": lambda x, y: theirs(x, y),
    }


def _in_ball_start(x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """torchattacks PGDL2's start: a random direction, radius uniform in [0, eps]."""
    d = torch.randn_like(x)
    d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (x + d * torch.rand(len(x), 1, 1, 1) * eps).clamp(0.0, 1.0)


@contextmanager
def in_ball_l2_start():
    original = rt_attacks.random_start
    rt_attacks.random_start = _in_ball_start
    try:
        yield
    finally:
        rt_attacks.random_start = original


def throughput(fns: dict, x, y, repeats: int) -> dict:
    """name -> list of seconds per call, alternating which implementation runs first."""
    names = list(fns)
    for name in names:  # warm-up
        fns[name](x, y)
    seconds = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[name](x, y)
            seconds[name].append(time.perf_counter() - start)
    return seconds


@torch.no_grad()
def robust_accuracy(model, attack, x, y, batch: int) -> float:
    correct = 0
    for i in range(0, len(y), batch):
        with torch.enable_grad():
            adv = attack(x[i:i + batch], y[i:i + batch])
        correct += int((model(adv).argmax(1) == y[i:i + batch]).sum())
    return correct / len(y)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, dataset, described = source_model(args.model, args.seed)
    test = load_dataset(dataset, "test")
    policy = InputPolicy(model.channels, model.input_size)
    x, y = policy.prepare(test.images[: args.batch]), test.labels[: args.batch]
    n_success = min(args.success_images, len(test))
    xs, ys = policy.prepare(test.images[:n_success]), test.labels[:n_success]
    with torch.no_grad():
        clean = float((model(xs).argmax(1) == ys).float().mean())
    print(f"model: {described}; {args.steps} steps of 2.5*eps/steps; timing batch {len(y)} x "
          f"{tuple(x.shape[1:])}, best of {args.repeats}; success on {n_success} images "
          f"(clean acc {clean:.3f}); {torch.get_num_threads()} thread(s)")
    print(f"{'attack':<17}{'ours img/s':>11}{'torchatt.':>11}{'ratio':>7}{'median':>8}"
          f"{'success ours':>14}{'torchatt.':>11}{'diff pts':>10}")
    ratios, diffs = [], []
    settings = [("l2", False), ("linf", False), ("l2", True), ("linf", True)]
    for norm, random_start in settings:
        row = compare(model, norm, random_start, args, (x, y), (xs, ys))
        ratios.append(row[2])
        diffs.append(row[-1])
        print_row(f"{norm} eps {EPS[norm]:.3g}" + (" +rs" if random_start else ""), row)
    with in_ball_l2_start():
        print_row("l2 +rs in-ball", compare(model, "l2", True, args, (x, y), (xs, ys)))
    print(f"throughput ratio ours/torchattacks: min {min(ratios):.2f} (target >= 1.0); "
          f"attack success difference: max {max(diffs):.2f} points (target <= 1)")


def compare(model, norm: str, random_start: bool, args, timing, success_set) -> tuple:
    """(ours img/s, theirs img/s, best ratio, median ratio, success ours, theirs, diff points)"""
    fns = attacks(model, norm, args.steps, random_start)
    torch.manual_seed(args.seed)
    sec = throughput(fns, *timing, args.repeats)
    best = {k: min(v) for k, v in sec.items()}
    n = len(timing[1])
    median = statistics.median(sec["torchattacks"]) / statistics.median(sec["ours"])
    torch.manual_seed(args.seed)
    success = {k: 1 - robust_accuracy(model, fn, *success_set, 250) for k, fn in fns.items()}
    return (n / best["ours"], n / best["torchattacks"], best["torchattacks"] / best["ours"], median,
            success["ours"], success["torchattacks"],
            100 * abs(success["ours"] - success["torchattacks"]))


def print_row(name: str, row: tuple) -> None:
    fmt = ["{:>11.1f}", "{:>11.1f}", "{:>7.2f}", "{:>8.2f}", "{:>14.3f}", "{:>11.3f}", "{:>10.2f}"]
    print(f"{name:<17}" + "".join(f.format(v) for f, v in zip(fmt, row, strict=True)))


if __name__ == "__main__":
    main()
