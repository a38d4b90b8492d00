"""GPU acceptance check: every CUDA path of robust-transfer, timed, in one JSON of figures.

Parts (each timed; a failing part is recorded with its error and the others still run):

* ``finetune``: ResNet-50 fine-tuning steps at 224 px through the training loop (bf16
  autocast, channels_last inputs), images/s forward + backward, every block trained.
* ``pgd``: our PGD (L2) against torchattacks' PGDL2 on the same model, batch and steps:
  seconds per batch each and the attack success of both.
* ``cache``: a k=3 fine-tuning run with the frozen prefix cached and the same run with the
  cache off (identical settings otherwise): seconds each and test accuracy each.
* ``influence``: last-layer influence on a ResNet-50's 2,048-feature head (features on
  the GPU, the solve as the library does it).
* ``ray``: 4 study runs sharing one GPU under Ray (``num_gpus: 0.25``) against the same 4
  runs one after another with the local executor.
* ``pretrain``: ``robust-transfer pretrain`` under ``torchrun`` (NCCL on a GPU) for a few
  steps of PGD training.

Sizes fit about 8 minutes on one GPU. Without a GPU the script refuses (exit 2) unless
``--cpu-smoke``, which runs every part on the CPU at tiny sizes to show the script works
(the suite runs it). Usage::

    make gpu-check                      # python scripts/gpu_check.py --out gpu_check.json
    python scripts/gpu_check.py --cpu-smoke --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from robust_transfer.data import DatasetInfo, ImageArrays
from robust_transfer.engine import transfer
from robust_transfer.engine.attacks import pgd
from robust_transfer.engine.training import FitOptions, OptimConfig, TensorLoader, fit
from robust_transfer.engine.transfer import Recipe, finetune
from robust_transfer.models import build_architecture, save_model
from robust_transfer.models.finetune import prepare_finetune

PARTS = ("finetune", "pgd", "cache", "influence", "ray", "pretrain")


@dataclass(frozen=True)
class Sizes:
    """How big each part is."""

    arch: str
    resolution: int
    batch: int
    finetune_steps: int
    pgd_batch: int
    pgd_steps: int
    cache_n: int
    cache_test: int
    cache_epochs: int
    influence_n: int
    influence_test: int
    ray_n: int
    ray_runs: int
    pretrain_arch: str
    pretrain_images: int


# cache part: 1,024 + 1,000 images of 784 KiB (k=3 prefix at 224 px) stay under the
# engine's 2 GiB in-memory limit, so the cached run really caches both splits
GPU = Sizes("resnet50", 224, 128, 20, 128, 10, 1024, 1000, 2, 3200, 1000, 512, 4, "resnet50", 1024)
SMOKE = Sizes("small_resnet", 16, 8, 2, 8, 2, 40, 20, 1, 30, 10, 20, 4, "small_resnet", 64)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu_check.json", help="the JSON of figures to write")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run every part on the CPU at tiny sizes (checks the script, not a GPU)")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated parts to run (default: all of {', '.join(PARTS)})")
    return p.parse_args(argv)


# --- data and models ----------------------------------------------------------------------
def synthetic(n: int, split: str, seed: int, classes: int = 10, size: int = 32) -> ImageArrays:
    """Colour images whose class sets their mean colour: learnable, no files needed."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randint(40, 216, (classes, 3, 1, 1), generator=torch.Generator().manual_seed(0))
    noise = torch.randn(n, 3, size, size, generator=g) * 30
    images = (centres[labels].float() + noise).clamp(0, 255).to(torch.uint8)
    info = DatasetInfo("gpu-check", tuple(str(c) for c in range(classes)), 3, size)
    return ImageArrays(images, labels, info, split)


def source(sizes: Sizes) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_architecture(sizes.arch, 1000)
    model.input_size = sizes.resolution
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --- the parts ----------------------------------------------------------------------------
def part_finetune(sizes: Sizes, device: torch.device, tmp: Path) -> dict:
    model = prepare_finetune(copy.deepcopy(source(sizes)), 10, "all").to(device)
    data = synthetic(sizes.batch * (sizes.finetune_steps + 2), "train", 1)
    from robust_transfer.data import InputPolicy

    policy = InputPolicy(3, sizes.resolution)
    loader = TensorLoader(data.images, data.labels, sizes.batch, transform=policy.prepare)
    options = FitOptions(epochs=1, optim=OptimConfig(lr=0.01), device=str(device))
    sync(device)
    start = time.perf_counter()
    history = fit(model, loader, None, options)
    sync(device)
    seconds = time.perf_counter() - start
    images = len(data)
    return {"arch": sizes.arch, "resolution": sizes.resolution, "batch": sizes.batch,
            "images": images, "seconds": seconds, "images_per_s": images / seconds,
            "autocast": "bf16" if device.type == "cuda" else "none",
            "channels_last_inputs": device.type == "cuda",
            "train_loss": history[-1].train_loss, "note": "first batch included (warm-up)"}


def part_pgd(sizes: Sizes, device: torch.device, tmp: Path) -> dict:
    import torchattacks

    model = prepare_finetune(copy.deepcopy(source(sizes)), 10, 0).to(device).eval()
    data = synthetic(sizes.pgd_batch, "test", 2)
    from robust_transfer.data import InputPolicy

    x = InputPolicy(3, sizes.resolution).prepare(data.images).to(device)
    y = data.labels.to(device)
    eps, steps = 3.0, sizes.pgd_steps
    alpha = 2.5 * eps / steps
    theirs = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    fns = {"ours": lambda: pgd(model, x, y, "l2", eps, steps, alpha),
           "torchattacks": lambda: theirs(x, y)}
    out: dict = {"batch": sizes.pgd_batch, "steps": steps, "norm": "l2", "eps": eps}
    for name, fn in fns.items():
        fn()  # warm-up
        sync(device)
        start = time.perf_counter()
        adv = fn()
        sync(device)
        out[f"{name}_seconds"] = time.perf_counter() - start
        with torch.no_grad():
            out[f"{name}_success"] = float((model(adv).argmax(1) != y).float().mean())
    out["throughput_ratio_ours_over_torchattacks"] = out["torchattacks_seconds"] / out["ours_seconds"]
    return out


def part_cache(sizes: Sizes, device: torch.device, tmp: Path) -> dict:
    train = synthetic(sizes.cache_n, "train", 3)
    test = synthetic(sizes.cache_test, "test", 4)
    src = source(sizes)
    recipe = Recipe(lr=0.01, batch_size=sizes.batch, augment=False,
                    resolution=sizes.resolution)
    out: dict = {"unfrozen": 3, "n": sizes.cache_n, "test": sizes.cache_test,
                 "epochs": sizes.cache_epochs}
    for label, cached in (("cached", True), ("uncached", False)):
        limit = transfer.PREFIX_MEMORY_LIMIT
        transfer.PREFIX_MEMORY_LIMIT = limit if cached else 0  # 0: nothing fits: no cache
        try:
            sync(device)
            start = time.perf_counter()
            result = finetune(src, train, test, unfrozen=3, epochs=sizes.cache_epochs,
                              recipe=recipe, device=str(device))
            sync(device)
        finally:
            transfer.PREFIX_MEMORY_LIMIT = limit
        out[f"{label}_seconds"] = time.perf_counter() - start
        out[f"{label}_test_acc"] = result.test_acc
        out[f"{label}_used_cache"] = result.cached_prefix
    out["speedup"] = out["uncached_seconds"] / out["cached_seconds"]
    return out


def part_influence(sizes: Sizes, device: torch.device, tmp: Path) -> dict:
    from robust_transfer.influence import influence_for_model

    model = prepare_finetune(copy.deepcopy(source(sizes)), 10, 0).to(device).eval()
    train = synthetic(sizes.influence_n, "train", 5)
    test = synthetic(sizes.influence_test, "test", 6)
    start = time.perf_counter()
    result = influence_for_model(model, train, test)
    seconds = time.perf_counter() - start
    return {"feature_dim": model.feature_dim, "n_train": sizes.influence_n,
            "n_test": sizes.influence_test, "seconds": seconds, "timings": result.timings,
            "scores_finite": bool(np.isfinite(result.scores).all()),
            "scores_shape": list(result.scores.shape)}


def part_ray(sizes: Sizes, device: torch.device, tmp: Path) -> dict:
    from robust_transfer.study import run_study

    model = source(sizes)
    ckpt = save_model(model, tmp / "ray_source", {"training": "natural", "eps": 0.0,
                                                   "norm": "none", "source_dataset": "none"})
    gpus = 0.25 if device.type == "cuda" else 0
    seeds = list(range(sizes.ray_runs))
    spec = {"name": "gpu-check-ray", "sources": [{"model": str(ckpt), "label": "natural"}],
            "targets": ["digits"], "train_images": [sizes.ray_n], "unfrozen_blocks": [3],
            "epochs": 1, "seeds": seeds, "device": str(device), "feature_cache": False,
            "recipe": {"lr": 0.01, "batch_size": sizes.batch, "resolution": sizes.resolution,
                       "augment": True},
            "resources": {"num_cpus": 1, "num_gpus": gpus}}
    out: dict = {"runs": sizes.ray_runs, "num_gpus_per_run": gpus}
    for label, executor in (("sequential", "local"), ("ray", "ray")):
        start = time.perf_counter()
        summary = run_study(spec, tmp / f"study_{label}", executor,
                            workers=None if executor == "ray" else 1)
        out[f"{label}_seconds"] = time.perf_counter() - start
        out[f"{label}_finished"] = summary.finished
        if summary.failed:
            raise RuntimeError(f"{label}: {summary.failed} run(s) failed: {summary.failures}")
    out["speedup"] = out["sequential_seconds"] / out["ray_seconds"]
    out["note"] = "ray_seconds includes starting and stopping a local Ray cluster"
    return out


def part_pretrain(sizes: Sizes, device: torch.device, tmp: Path) -> dict:
    out_stem = tmp / "pretrained"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "robust_transfer", "pretrain", "--arch", sizes.pretrain_arch, "--dataset", "digits",
           "--input-size", str(sizes.resolution), "--train-images", str(sizes.pretrain_images),
           "--eval-images", "64", "--epochs", "1", "--batch-size", str(sizes.batch),
           "--attack", "pgd", "--norm", "l2", "--eps", "0.5", "--attack-steps", "2",
           "--workers", "0", "--out", str(out_stem)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    meta = json.loads(out_stem.with_suffix(".json").read_text())
    return {"backend": "nccl" if device.type == "cuda" else "gloo", "seconds": seconds,
            "arch": meta.get("arch"), "clean_acc": meta.get("clean_acc"),
            "images": sizes.pretrain_images, "note": "includes process start and data loading"}


RUNNERS = {"finetune": part_finetune, "pgd": part_pgd, "cache": part_cache,
           "influence": part_influence, "ray": part_ray, "pretrain": part_pretrain}


# --- driver -------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"error: unknown part(s) {', '.join(unknown)}; valid: {', '.join(PARTS)}",
              file=sys.stderr)
        return 2
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible: the GPU acceptance check needs one "
              "(--cpu-smoke runs it on the CPU at tiny sizes to check the script)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    sizes = SMOKE if args.cpu_smoke else GPU
    report = {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
              "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "sizes": asdict(sizes),
              "parts": {}, "errors": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        for name in parts:
            t0 = time.perf_counter()
            try:
                report["parts"][name] = {**RUNNERS[name](sizes, device, Path(tmp)),
                                         "part_seconds": time.perf_counter() - t0}
            except Exception as err:  # record and go on: one JSON with everything that ran
                report["errors"][name] = f"{type(err).__name__}: {err}\n{traceback.format_exc()[-1500:]}"
            print(f"{name}: {'ok' if name in report['parts'] else 'FAILED'} "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    report["total_seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"wrote {out} ({len(report['parts'])} part(s) ok, {len(report['errors'])} failed, "
          f"{report['total_seconds']:.0f} s)")
    return 1 if report["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
