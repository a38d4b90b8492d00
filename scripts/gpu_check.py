"""GPU acceptance check: every CUDA path of robust-transfer, timed, in one JSON of figures.

Parts (each timed; a failing part is recorded with its error and the others still run):

* ``finetune``: ResNet-50 fine-tuning steps at 224 px through the training loop (bf16
  autocast, channels_last inputs), images/s forward + backward, every block trained.
* ``pgd``: our PGD (L2) against torchattacks' PGDL2 on the same model, batch and steps:
  seconds per batch each and the attack success of both.
* ``input``: the input pipeline alone (target images on the device, indexed, resized to
  224 px and augmented there) in images/s, against the model's training step alone, and
  the share of a training step spent on inputs, for 3 blocks unfrozen and for all.
* ``paper_code``: one paper-like run (CIFAR-10-shaped synthetic data, n = 1,600, 3 blocks
  unfrozen, a few epochs) through our ``finetune`` against the paper's code path
  re-expressed: PIL ``Resize(224)``, ``RandomCrop(224, padding=4)``, flip,
  ``ColorJitter(.25, .25, .25)``, ``RandomRotation(2)`` in a ``DataLoader`` with 10
  workers, frozen blocks by ``requires_grad=False`` with BatchNorm in train mode, float32,
  and a full-model evaluation of the whole test set at every logged epoch (the robustness
  library's ``log_iters`` rule: epoch index % log_iters == 0, and the last). Seconds each.
* ``cache``: a k=3 fine-tuning run with the frozen prefix cached and the same run with the
  cache off (identical settings otherwise): seconds each and test accuracy each.
* ``influence``: last-layer influence on a ResNet-50's 2,048-feature head (features on
  the GPU, the solve as the library does it).
* ``ray``: 4 study runs sharing one GPU under Ray (``num_gpus: 0.25``) against the same 4
  runs one after another with the local executor.
* ``pretrain``: ``robust-transfer pretrain`` under ``torchrun`` (NCCL on a GPU) for a few
  steps of PGD training.

Sizes aim at about 6 minutes on one H200 (estimated, not yet measured); ``--max-seconds``
(default 360) skips the parts not yet started once it has passed, recording them in
``skipped``, so a rerun fits a session's device time. Without a GPU the script refuses (exit 2) unless
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

PARTS = ("finetune", "input", "paper_code", "pgd", "cache", "influence", "ray", "pretrain")


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
    input_steps: int
    paper_n: int
    paper_test: int
    paper_epochs: int
    paper_log_iters: int
    paper_workers: int


# cache part: 1,024 + 1,000 images of 784 KiB (k=3 prefix at 224 px) stay under the
# engine's 2 GiB in-memory limit, so the cached run really caches both splits
# paper_code: 1,600 CIFAR-sized images, 4 epochs, the test set evaluated at epochs 0, 2, 3
# (0-based, log_iters 2) by the paper's path and after epochs 2 and 4 by ours (eval_every 2)
GPU = Sizes("resnet50", 224, 128, 20, 128, 10, 1024, 1000, 2, 3200, 1000, 512, 4, "resnet50", 1024,
            30, 1600, 2000, 4, 2, 10)
SMOKE = Sizes("small_resnet", 16, 8, 2, 8, 2, 40, 20, 1, 30, 10, 20, 4, "small_resnet", 64,
              3, 40, 20, 2, 1, 2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu_check.json", help="the JSON of figures to write")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run every part on the CPU at tiny sizes (checks the script, not a GPU)")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated parts to run (default: all of {', '.join(PARTS)})")
    p.add_argument("--max-seconds", type=float, default=360.0,
                   help="start no part after this many seconds (default 360); the rest are skipped")
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


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, device: torch.device) -> None:
    """One step as :func:`robust_transfer.engine.training.fit` takes it (bf16 autocast on CUDA)."""
    from robust_transfer.engine.training import autocast

    with autocast(device):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _timed_loop(fn, steps: int, device: torch.device) -> float:
    fn()  # warm-up (cuDNN autotuning, allocator)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return time.perf_counter() - start


def part_input(sizes: Sizes, device: torch.device, tmp: Path) -> dict:
    """Input pipeline alone, model step alone and both together, images/s each."""
    from robust_transfer.data import InputPolicy
    from robust_transfer.data.loader import TensorLoader, device_budget

    data = synthetic(sizes.batch * 8, "train", 7)  # 32 px, as CIFAR: resized on the device
    policy = InputPolicy(3, sizes.resolution, augment=True)
    loader = TensorLoader(data.images, data.labels, sizes.batch, shuffle=True,
                          transform=policy.train_batch, device=device,
                          budget=device_budget(device))
    batches = iter(())

    def next_batch():
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            loader.set_epoch(loader.epoch + 1)
            batches = iter(loader)
            return next(batches)

    steps = sizes.input_steps
    out: dict = {"resolution": sizes.resolution, "batch": sizes.batch, "steps": steps,
                 "source_px": 32, "augment": True, "placement": loader.placement}
    t_input = _timed_loop(next_batch, steps, device)
    out["input_images_per_s"] = steps * sizes.batch / t_input
    for unfrozen in (3, "all"):
        out[f"unfrozen_{unfrozen}"] = _model_rates(sizes, unfrozen, next_batch, t_input, device)
    out["note"] = (f"input: index + resize 32->{sizes.resolution} + augment on the device; model: forward + "
                   "backward + SGD on one fixed batch; step: both; input_share_of_step = "
                   "1 - model time / step time (everything runs on one stream)")
    return out


def _model_rates(sizes: Sizes, unfrozen: int | str, next_batch, t_input: float,
                 device: torch.device) -> dict:
    """The model's step alone (one fixed batch) and with the input pipeline, images/s."""
    model = prepare_finetune(copy.deepcopy(source(sizes)), 10, unfrozen).to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x0, y0 = next_batch()
    steps = sizes.input_steps
    t_model = _timed_loop(lambda: _train_step(model, opt, x0, y0, device), steps, device)

    def full_step() -> None:
        x, y = next_batch()
        _train_step(model, opt, x, y, device)

    t_full = _timed_loop(full_step, steps, device)
    return {"model_images_per_s": steps * sizes.batch / t_model,
            "step_images_per_s": steps * sizes.batch / t_full,
            "input_seconds": t_input, "model_seconds": t_model, "step_seconds": t_full,
            "input_over_model_rate": t_model / t_input,
            "input_share_of_step": max(0.0, 1.0 - t_model / t_full)}


class _PaperDataset(torch.utils.data.Dataset):
    """Our uint8 arrays as PIL images through a torchvision transform, as torchvision's CIFAR10."""

    def __init__(self, data: ImageArrays, transform) -> None:
        self.images = data.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = data.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def _paper_transforms(size: int):
    from torchvision import transforms as T

    train = T.Compose([T.Resize(size), T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(),
                       T.ColorJitter(.25, .25, .25), T.RandomRotation(2), T.ToTensor()])
    test = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor()])
    return train, test


def _paper_model(src: torch.nn.Module, unfrozen: int, device: torch.device) -> torch.nn.Module:
    """New N(0, 1) head, blocks frozen by requires_grad only: BatchNorm keeps training."""
    model = copy.deepcopy(src)
    model.reset_classifier(10, "paper", torch.Generator().manual_seed(0))
    for p in model.parameters():
        p.requires_grad_(False)
    for module in [*model.blocks()[-unfrozen:], model.head]:
        for p in module.parameters():
            p.requires_grad_(True)
    model = model.to(device)
    torch.nn.Module.train(model, True)  # the base class's train(): every BatchNorm in train mode
    return model


def _paper_run(src, train: ImageArrays, test: ImageArrays, indices: np.ndarray, sizes: Sizes,
               device: torch.device) -> dict:
    """The paper's code path re-expressed: PIL workers, float32, full-model evaluation."""
    from torch.utils.data import DataLoader, SubsetRandomSampler

    train_tf, test_tf = _paper_transforms(sizes.resolution)
    kw = {"batch_size": sizes.batch, "num_workers": sizes.paper_workers,
          "pin_memory": device.type == "cuda"}
    train_loader = DataLoader(_PaperDataset(train, train_tf),
                              sampler=SubsetRandomSampler(indices.tolist()), **kw)
    test_loader = DataLoader(_PaperDataset(test, test_tf), shuffle=False, **kw)
    model = _paper_model(src, 3, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, sizes.paper_epochs // 3))
    accs = []
    for epoch in range(sizes.paper_epochs):
        torch.nn.Module.train(model, True)
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if epoch % sizes.paper_log_iters == 0 or epoch == sizes.paper_epochs - 1:
            model.eval()
            correct = 0
            with torch.no_grad():
                for x, y in test_loader:
                    correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
            accs.append(correct / len(test))
    return {"evaluations": len(accs), "test_acc": accs[-1]}


def part_paper_code(sizes: Sizes, device: torch.device, tmp: Path) -> dict:
    """Our fine-tuning against the paper's code path, same data, model and GPU."""
    from robust_transfer.engine.transfer import training_indices

    train = synthetic(max(5000, sizes.paper_n), "train", 8)
    test = synthetic(sizes.paper_test, "test", 9)
    src = source(sizes)
    recipe = Recipe(resolution=sizes.resolution, augment=True, head_init="paper",
                    eval_every=sizes.paper_log_iters, batch_size=sizes.batch)
    out: dict = {"n": sizes.paper_n, "test": sizes.paper_test, "epochs": sizes.paper_epochs,
                 "unfrozen": 3, "workers_paper": sizes.paper_workers}
    sync(device)
    start = time.perf_counter()
    ours = finetune(src, train, test, n=sizes.paper_n, unfrozen=3, epochs=sizes.paper_epochs,
                    recipe=recipe, device=str(device))
    sync(device)
    out["ours_seconds"] = time.perf_counter() - start
    out["ours_test_acc"] = ours.test_acc
    out["ours_evaluations"] = sum(1 for h in ours.history if h.test_acc == h.test_acc)
    indices, _ = training_indices(train, sizes.paper_n, 0)
    start = time.perf_counter()
    theirs = _paper_run(src, train, test, indices, sizes, device)
    sync(device)
    out["paper_seconds"] = time.perf_counter() - start
    out["paper_test_acc"] = theirs["test_acc"]
    out["paper_evaluations"] = theirs["evaluations"]
    out["speedup"] = out["paper_seconds"] / out["ours_seconds"]
    out["note"] = ("ours: bf16 autocast on CUDA, inputs on the device, cached test prefix; "
                   "paper path: float32, as the robustness library ran by default")
    return out


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


RUNNERS = {"finetune": part_finetune, "input": part_input, "paper_code": part_paper_code,
           "pgd": part_pgd, "cache": part_cache,
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
              "parts": {}, "errors": {}, "skipped": []}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        for name in parts:
            t0 = time.perf_counter()
            if t0 - start > args.max_seconds:
                report["skipped"].append(name)
                print(f"{name}: skipped (past --max-seconds {args.max_seconds:g})", file=sys.stderr)
                continue
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
