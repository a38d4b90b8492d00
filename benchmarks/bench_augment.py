"""Augmentation on the CPU: the per-image torchvision loop it replaced against the batched version.

Target (issue 18): the batched augmentation's tensor operations per batch are the same for
16 and 256 images (counted with ``torch.profiler``: top-level ``aten::`` calls), while the
per-image loop's grow with the batch. Images/s of both are printed side by side at 32 and
224 px, alternating old and new within one process (the best of ``--repeats`` runs each),
one torch thread unless ``--threads``.

On a CPU the batched version is memory-bound at 224 px, so its speed-up there is small; its
point is the GPU, where every operation is a kernel launch (``scripts/gpu_check.py``'s
``input`` part measures that). The old code below is the project's own previous
``augment_batch``, kept here only as the reference.

    .venv/bin/python benchmarks/bench_augment.py
    .venv/bin/python benchmarks/bench_augment.py --threads 2 --batch 128
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from robust_transfer.data.augment import augment_batch

_OLD = v2.Compose([v2.RandomHorizontalFlip(), v2.ColorJitter(0.25, 0.25, 0.25), v2.RandomRotation(2)])


def old_augment_batch(x: torch.Tensor) -> torch.Tensor:
    """The previous implementation: a batched crop, then torchvision v2 per image."""
    b, c, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (b,)), torch.randint(0, 9, (b,))
    rows = dy.view(b, 1) + torch.arange(h).view(1, h)
    cols = dx.view(b, 1) + torch.arange(w).view(1, w)
    idx_b = torch.arange(b).view(b, 1, 1)
    cropped = padded.permute(0, 2, 3, 1)[idx_b, rows.view(b, h, 1), cols.view(b, 1, w)].permute(0, 3, 1, 2)
    return torch.stack([_OLD(img) for img in cropped]).clamp_(0.0, 1.0).contiguous()


def new_augment_batch(x: torch.Tensor) -> torch.Tensor:
    return augment_batch(x)


FNS = {"old": old_augment_batch, "new": new_augment_batch}


def op_count(fn, batch: int, size: int = 32) -> int:
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand(batch, 3, size, size)
    fn(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(x)
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)


def images_per_s(fns: dict, batch: int, size: int, repeats: int) -> dict[str, float]:
    x = torch.rand(batch, 3, size, size)
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():  # alternating: load changes hit both alike
            start = time.perf_counter()
            fn(x)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: batch / t for name, t in best.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f}, {args.threads} thread(s), batch {args.batch}")
    print("tensor ops per batch (torch.profiler, top-level aten calls):")
    for name, fn in FNS.items():
        counts = {b: op_count(fn, b) for b in (16, 256)}
        print(f"  {name}: 16 images {counts[16]:6d}   256 images {counts[256]:6d}")
    print("images/s (best of repeats), old vs new:")
    for size in (32, 224):
        rates = images_per_s(FNS, args.batch, size, args.repeats)
        print(f"  {size:3d} px: old {rates['old']:8.0f}   new {rates['new']:8.0f}   "
              f"new/old {rates['new'] / rates['old']:.2f}x")


if __name__ == "__main__":
    main()
