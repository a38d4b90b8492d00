"""Feature cache: a head-only study on the embedded zoo, with and without the on-disk cache.

Target (issue 3): at least 20 runs with 0 unfrozen blocks run at least 10x faster with the
cache than without, with equal results. Both studies run in this process with one torch
thread per run, from an empty directory, so the cached one pays for filling its cache.

Three grids are timed, all head-only:

* ``digits``: the few-epoch regime the paper is about (5 epochs, batch 128), 10 seeds.
  Digits has only 449 test images, so a run saves little prefix work per run and the
  fixed cost of fine-tuning (copying the model, the training loop) weighs more.
* ``fmnist``: the same on a target with 10,000 test images, like each of the paper's
  targets; an uncached run recomputes all of their prefix outputs.
* ``embedded``: the head-only half of ``studies/embedded.yaml`` (15 epochs, batch 32).

An augmented grid (issue 8) is timed three ways:

* ``augmented``: Fashion-MNIST with ``augment: true`` (10,000 test images, evaluated after
  each of 5 epochs), 0 and 1 unfrozen blocks. Training images change every epoch, so only
  the test images' prefix outputs can be cached. Compared: the whole model on every
  evaluation (what the code did before: forced here with ``PREFIX_MEMORY_LIMIT = 0``),
  test outputs computed once per run (no disk cache), and test outputs shared by every
  run through the disk cache.

Measured 2026-12-01 on the 2-core machine while other benchmarks and tests loaded it
(``augmented`` only): whole model every evaluation 596 s, test outputs once per run 53 s
(11.3x), shared on disk 40 s (14.9x), test accuracies identical.

    .venv/bin/python benchmarks/bench_feature_cache.py              # every grid
    .venv/bin/python benchmarks/bench_feature_cache.py augmented    # just that one
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from robust_transfer.engine import transfer
from robust_transfer.models.zoo import embedded_models
from robust_transfer.study import load_results, load_spec, run_study

FEW_EPOCHS = {"epochs": 5, "recipe": {"lr": 0.1, "batch_size": 128}}
GRIDS = {  # name -> (target, axes)
    "digits": ("digits", {"train_images": [100, 200, 400, 800], "seeds": list(range(10)),
                          **FEW_EPOCHS}),
    "fmnist": ("fmnist", {"train_images": [100, 200, 400, 800], "seeds": list(range(5)),
                          **FEW_EPOCHS}),
    "embedded": ("digits", {"train_images": [25, 50, 100, 200], "epochs": 15, "seeds": [0, 1, 2],
                            "recipe": {"lr": 0.1, "batch_size": 32}}),
}


AUGMENTED = ("fmnist", {"train_images": [100, 200], "seeds": [0, 1], "unfrozen_blocks": [0, 1],
                        "epochs": 5, "recipe": {"lr": 0.1, "batch_size": 128, "augment": True}})


def make_spec(target: str, axes: dict, sources: list[str]) -> dict:
    return {"name": "bench-cache", "sources": [{"model": s, "label": s} for s in sources],
            "targets": [target], "unfrozen_blocks": [0], **axes}


def timed(spec, out: Path, cache: bool) -> float:
    start = time.perf_counter()
    summary = run_study(spec, out, feature_cache=cache)
    assert summary.failed == 0, summary.failures
    return time.perf_counter() - start


def compare(name: str, target: str, axes: dict, sources: list[str], root: Path) -> None:
    spec = load_spec(make_spec(target, axes, sources))
    runs = len(spec.runs())
    uncached = timed(spec, root / f"{name}-off", cache=False)
    cached = timed(spec, root / f"{name}-on", cache=True)
    a, _ = load_results(root / f"{name}-off")
    b, _ = load_results(root / f"{name}-on")
    equal = a.set_index("run_id")["test_acc"].equals(b.set_index("run_id")["test_acc"])
    print(f"{name} ({target}, {runs} head-only runs, {axes['epochs']} epochs): without cache "
          f"{uncached:.2f}s, with cache {cached:.2f}s -> {uncached / cached:.1f}x faster; "
          f"test accuracies identical: {equal}")


def compare_augmented(sources: list[str], root: Path) -> None:
    target, axes = AUGMENTED
    spec = load_spec(make_spec(target, axes, sources))
    limit = transfer.PREFIX_MEMORY_LIMIT
    transfer.PREFIX_MEMORY_LIMIT = 0  # nothing cached: the whole model on every evaluation
    try:
        whole = timed(spec, root / "aug-whole", cache=False)
    finally:
        transfer.PREFIX_MEMORY_LIMIT = limit
    per_run = timed(spec, root / "aug-per-run", cache=False)
    shared = timed(spec, root / "aug-shared", cache=True)
    acc = {name: load_results(root / name)[0].set_index("run_id")["test_acc"]
           for name in ("aug-whole", "aug-per-run", "aug-shared")}
    runs = len(spec.runs())
    print(f"augmented ({target}, augment on, {runs} runs at unfrozen 0 and 1, "
          f"{axes['epochs']} evaluations of 10,000 test images each): whole model every "
          f"evaluation {whole:.2f}s, test outputs once per run {per_run:.2f}s "
          f"({whole / per_run:.1f}x), shared on disk {shared:.2f}s ({whole / shared:.1f}x); "
          f"test accuracies identical: {acc['aug-whole'].equals(acc['aug-per-run'])} and "
          f"{acc['aug-whole'].equals(acc['aug-shared'])}")


def main() -> None:
    sources = [m["name"] for m in embedded_models()][:1]
    if not sources:
        raise SystemExit("the embedded zoo is empty: run `make zoo` first")
    only = set(sys.argv[1:])
    print(f"source: {sources[0]}; in process, 1 thread per run, caches start empty")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (target, axes) in GRIDS.items():
            if not only or name in only:
                compare(name, target, axes, sources, Path(tmp))
        if not only or "augmented" in only:
            compare_augmented(sources, Path(tmp))


if __name__ == "__main__":
    main()
