"""What fine-tuning runs cost, from counted work: FLOPs per part of the network, times how
often each part runs, turned into seconds by a throughput measured on this machine.

Counting. For an architecture, input size and number of unfrozen blocks,
:func:`count_flops` runs the model once on the ``meta`` device (no memory, no arithmetic)
under :class:`torch.utils.flop_counter.FlopCounterMode` and records three numbers per
image: the frozen prefix's forward, the trainable suffix's forward, and one training step
of the suffix (forward and backward, as autograd runs it: no gradient for the prefix).

What a run does (:func:`run_work`), with n training images, E epochs, V evaluations of
T test images:

* training: ``E * n`` suffix steps, plus ``E * n`` prefix forwards unless the training
  images' prefix outputs are cached;
* evaluation: ``V * T`` suffix forwards, plus ``V * T`` prefix forwards unless the test
  images' prefix outputs are cached;
* filling the cache: one prefix forward per cached image, shared by every run of the
  study with the same (source, target, split, resolution, depth) when the study's feature
  cache is on;
* robust evaluation (``recipe: {robust_eps: ...}``): after training, R test images
  attacked with S PGD steps through the whole network, never cached: ``R * S`` attack
  steps, each a whole-network forward and a backward to the input only (the gradient
  of the pixels, no weight gradients: counted as two forwards, at the training-step
  rate), then ``R`` whole-network forwards. With 200 images and 20 steps (the tuning
  preset) this is most of a small study's time.

What is cached (:func:`cached_splits`): test images always at the frozen depth (they are
never augmented); training images only when they are not augmented; nothing when every
block trains (``unfrozen: all``: no frozen prefix). This is the engine's own statement of
the rule, ``engine.transfer.cache_plan``.

Time. :func:`calibrate` measures this machine's rate for the model: FLOP/s of a no-grad
forward pass and of a full training step (at the study's threads, bf16 autocast on a
GPU as the training loop uses), the seconds per image of input preparation and of the
augmentation (timed with the images on the device, where runs prepare their batches), and
a fixed per-run overhead (copying the source, a new head). Counted
FLOPs divided by those rates give seconds; FlopCounterMode counts matrix products and
convolutions only, so the measured rates absorb the cost of normalisation, activations
and memory traffic as it is for this model.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F

from robust_transfer.engine.transfer import cache_plan

PARTS = ("train_step", "train_prefix", "eval_suffix", "eval_prefix", "cache_fill",
         "robust_eval", "inputs", "overhead")
PART_NAMES = {
    "train_step": "trainable blocks and head, forward + backward",
    "train_prefix": "frozen prefix on training images every epoch (augmented or uncached)",
    "eval_suffix": "trainable part on test images at each evaluation",
    "eval_prefix": "frozen prefix on test images at each evaluation (uncached)",
    "cache_fill": "frozen prefix once per cached image",
    "robust_eval": "robust evaluation: PGD steps through the whole network on test images",
    "inputs": "resizing and augmenting images (on the run's device)",
    "overhead": "per-run set-up (copying the source, new head)",
}


@dataclass(frozen=True)
class PartFlops:
    """FLOPs per image of one split of a model into frozen prefix and trainable suffix.

    Attributes:
        depth: stages in the frozen prefix (stem counts as one, then each block).
        prefix: forward of the frozen prefix (and the pooling when nothing else is left).
        suffix_forward: forward of the trainable part without autograd.
        suffix_train: one training step of the trainable part (forward and backward).
    """

    depth: int
    prefix: float
    suffix_forward: float
    suffix_train: float

    @property
    def forward(self) -> float:
        return self.prefix + self.suffix_forward


def count_flops(arch: str, resolution: int, unfrozen: int | str, num_classes: int = 10) -> PartFlops:
    """Count per-image FLOPs of the prefix, suffix forward and suffix training step.

    Args:
        arch: a registered architecture.
        resolution: the square input size.
        unfrozen: blocks trained besides the head (``"0"``, ``"3"``, ``"all"``).
        num_classes: classes of the new head.

    Returns:
        A :class:`PartFlops`. The network is counted once per (arch, resolution,
        unfrozen) with a 10-class head on the meta device (about a second); other head
        sizes add their matrix products exactly (2 * features * classes per product).
    """
    base = _counted(arch, resolution, str(unfrozen), 10)
    if num_classes == 10:
        return base
    dim = _feature_dim(arch)
    delta = 2.0 * dim * (num_classes - 10)
    # a training step: forward, weight gradient, and the input gradient unless the head
    # is all that trains (its input is then a fixed feature)
    train_products = 2 if base.depth == _stage_count(arch) else 3
    return replace(base, suffix_forward=base.suffix_forward + delta,
                   suffix_train=base.suffix_train + train_products * delta)


@functools.cache
def _feature_dim(arch: str) -> int:
    from robust_transfer.models import build_architecture

    with torch.device("meta"):
        return build_architecture(arch, 10).feature_dim


@functools.cache
def _stage_count(arch: str) -> int:
    from robust_transfer.models import build_architecture

    with torch.device("meta"):
        return len(build_architecture(arch, 10).stages())


@functools.cache
def _counted(arch: str, resolution: int, unfrozen: str, num_classes: int) -> PartFlops:
    from torch.utils.flop_counter import FlopCounterMode

    from robust_transfer.models import build_architecture
    from robust_transfer.models.finetune import set_unfrozen_blocks

    with torch.device("meta"):
        model = build_architecture(arch, num_classes)
        set_unfrozen_blocks(model, unfrozen if unfrozen == "all" else int(unfrozen))
        depth = model.frozen_depth
        pooled = depth >= len(model.stages())
        x = torch.empty(1, model.channels, resolution, resolution)
        y = torch.zeros(1, dtype=torch.long)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            h = model.forward_prefix(x, depth)
            h = model.pool(h) if pooled else h
        prefix = counter.get_total_flops()
        model.eval()
        with counter, torch.no_grad():
            _suffix(model, h, depth, pooled)
        suffix_forward = counter.get_total_flops()
        model.train()
        with counter:
            F.cross_entropy(_suffix(model, h.detach(), depth, pooled), y).backward()
        suffix_train = counter.get_total_flops()
    return PartFlops(depth, float(prefix), float(suffix_forward), float(suffix_train))


def _suffix(model, h: torch.Tensor, depth: int, pooled: bool) -> torch.Tensor:
    return model.head(h) if pooled else model.forward_from(h, depth)


def cached_splits(depth: int, augmented: bool, n_blocks: int | None = None) -> tuple[bool, bool]:
    """Whether the (train, test) images' frozen-prefix outputs are computed once.

    The engine's rule (:func:`robust_transfer.engine.transfer.cache_plan`, with the test
    outputs on disk as a study's cache holds them): test images are never augmented, so
    theirs are cached whenever there is a frozen prefix; training images' only when they
    are not augmented.

    Args:
        depth: frozen stages (stem + frozen blocks); 0 when every block trains.
        augmented: the training images are augmented.
        n_blocks: the architecture's blocks (default: ``depth - 1``, i.e. depth counted
            from a head-only run; the answer depends only on ``depth`` and ``augmented``).
    """
    blocks = max(depth - 1, 0) if n_blocks is None else n_blocks
    unfrozen = "all" if depth == 0 else blocks + 1 - depth
    plan = cache_plan(blocks, unfrozen, augmented, test_on_disk=True)
    return plan.train, plan.test


@dataclass
class Work:
    """Counted work, per part (see :data:`PART_NAMES`).

    FLOP fields are FLOPs; ``prepared``/``augmented`` count images resized / augmented;
    ``runs`` counts runs (for the per-run overhead).
    """

    train_step: float = 0.0
    train_prefix: float = 0.0
    eval_suffix: float = 0.0
    eval_prefix: float = 0.0
    cache_fill: float = 0.0
    prepared: float = 0.0
    augmented: float = 0.0
    runs: float = 0.0
    robust_attack: float = 0.0  # FLOPs of PGD steps (forward + input backward, whole network)
    robust_forward: float = 0.0  # FLOPs of the attacked images' final forwards

    def __iadd__(self, other: Work) -> Work:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def flops(self) -> float:
        return (self.train_step + self.train_prefix + self.eval_suffix + self.eval_prefix
                + self.cache_fill + self.robust_attack + self.robust_forward)


@dataclass(frozen=True)
class RunShape:
    """What a run's cost depends on.

    Attributes:
        arch, resolution, unfrozen: the model and how much of it trains.
        n: training images; epochs; evals: number of test evaluations; test: test images.
        augmented: training images are augmented.
        num_classes: classes of the target.
        train_size: images in the target's training split (bounds what a cache holds).
        image_size: the target's native image size (the resize cost).
        robust_images, robust_steps: the robust evaluation after training (0: none).
    """

    arch: str
    resolution: int
    unfrozen: int | str
    n: int
    epochs: int
    evals: int
    test: int
    augmented: bool
    num_classes: int = 10
    train_size: int = 0
    image_size: int = 32
    robust_images: int = 0
    robust_steps: int = 0


def run_work(shape: RunShape, cache: bool = True, fill: bool = True,
             cached: tuple[bool, bool] | None = None) -> Work:
    """Counted work of one run.

    Args:
        shape: the run.
        cache: use the prefix cache as :func:`cached_splits` says (False: nothing cached,
            every image goes through the whole network every time).
        fill: include the cache fill (False when a study shares it; see
            :func:`study_cost`).
        cached: (train, test) cached, as observed, instead of the rule.
    """
    p = count_flops(shape.arch, shape.resolution, shape.unfrozen, shape.num_classes)
    if cached is not None:
        cache_train, cache_test = cached
    elif cache:
        cache_train, cache_test = cached_splits(p.depth, shape.augmented, _stage_count(shape.arch) - 1)
    else:
        cache_train, cache_test = False, False
    steps, tests = shape.epochs * shape.n, shape.evals * shape.test
    w = Work(train_step=steps * p.suffix_train, eval_suffix=tests * p.suffix_forward, runs=1)
    w.train_prefix = 0.0 if cache_train else steps * p.prefix
    w.eval_prefix = 0.0 if cache_test else tests * p.prefix
    filled = (shape.n if cache_train else 0) + (shape.test if cache_test else 0)
    w.cache_fill = filled * p.prefix if fill else 0.0
    w.prepared = (0 if cache_train else steps) + (0 if cache_test else tests) + (filled if fill else 0)
    w.augmented = steps if shape.augmented else 0
    if shape.robust_images and shape.robust_steps:
        whole = count_flops(shape.arch, shape.resolution, "all", shape.num_classes)
        w.robust_attack = shape.robust_images * shape.robust_steps * 2 * whole.suffix_forward
        w.robust_forward = shape.robust_images * whole.suffix_forward
        w.prepared += shape.robust_images
    return w


# --- time on this machine ----------------------------------------------------------------
@dataclass(frozen=True)
class Throughput:
    """This machine's measured rates for one model at one input size.

    Attributes:
        forward: FLOP/s of a no-grad forward pass.
        train: FLOP/s of a training step (forward + backward + SGD update).
        prepare: seconds per image to resize a uint8 image to the input size.
        augment: seconds per image of the training augmentation.
        overhead: seconds per run of set-up.
        device, threads: where it was measured.
    """

    forward: float
    train: float
    prepare: float
    augment: float
    overhead: float
    device: str
    threads: int

    def seconds(self, work: Work) -> dict[str, float]:
        """Seconds per part of ``work`` (keys: :data:`PARTS`)."""
        out = {k: getattr(work, k) / self.forward
               for k in ("train_prefix", "eval_suffix", "eval_prefix", "cache_fill")}
        out["train_step"] = work.train_step / self.train
        out["robust_eval"] = work.robust_attack / self.train + work.robust_forward / self.forward
        out["inputs"] = work.prepared * self.prepare + work.augmented * self.augment
        out["overhead"] = work.runs * self.overhead
        return {k: out[k] for k in PARTS}


_CALIBRATIONS: dict[tuple, Throughput] = {}


def calibrate(arch: str, resolution: int, device: str = "cpu", threads: int | None = None,
              batch: int | None = None, image_size: int = 32) -> Throughput:
    """Measure this machine's throughput for ``arch`` at ``resolution`` (a few seconds).

    One warm-up and the best of two timed batches each of a no-grad forward pass and a
    training step of the whole model, at ``threads`` torch threads (and bf16 autocast with channels_last
    inputs on CUDA, as the training loop). Results are kept for the process.

    Args:
        arch: a registered architecture.
        resolution: the input size.
        device: ``"cpu"`` or ``"cuda"``.
        threads: torch CPU threads (default: the current setting).
        batch: images per timed batch (default: 2 on the CPU at >= 128 px, 64 on a GPU).
        image_size: native size of the target's images (for the resize cost).

    Returns:
        A :class:`Throughput`.
    """
    threads = threads or torch.get_num_threads()
    key = (arch, resolution, device, threads, batch, image_size)
    if key not in _CALIBRATIONS:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            _CALIBRATIONS[key] = _measure(arch, resolution, torch.device(device), threads,
                                          batch, image_size)
        finally:
            torch.set_num_threads(previous)
    return _CALIBRATIONS[key]


def _measure(arch, resolution, device, threads, batch, image_size) -> Throughput:
    from robust_transfer.engine.training import autocast
    from robust_transfer.models import build_architecture
    from robust_transfer.models.finetune import prepare_finetune

    cuda = device.type == "cuda"
    b = batch or (64 if cuda else (2 if resolution >= 128 else 32))
    source = build_architecture(arch, 1000)
    start = time.perf_counter()  # what finetune does before training: copy, new head
    model = prepare_finetune(copy.deepcopy(source), 10, "all").to(device)
    overhead = time.perf_counter() - start
    x = torch.rand(b, model.channels, resolution, resolution, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(b, dtype=torch.long, device=device)
    full = count_flops(arch, resolution, "all")

    def forward():
        with torch.no_grad(), autocast(device):
            model(x)

    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        with autocast(device):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.eval()
    t_fwd = _timed(forward, cuda)
    model.train()
    t_train = _timed(step, cuda)
    t_prep, t_aug = _measure_inputs(model.channels, resolution, device, image_size)
    return Throughput(b * full.forward / t_fwd, b * full.suffix_train / t_train, t_prep,
                      t_aug, overhead, str(device), threads)


def _measure_inputs(channels: int, resolution: int, device: torch.device,
                    image_size: int) -> tuple[float, float]:
    """Seconds per image of resizing and of augmenting, with the images on ``device``.

    A run keeps its uint8 images on its device and prepares batches there
    (:class:`~robust_transfer.data.loader.TensorLoader`), so that is where the input side
    is timed: a batch of 128 images on a GPU, 8 on the CPU.
    """
    from robust_transfer.data import InputPolicy

    cuda = device.type == "cuda"
    b = 128 if cuda else 8
    policy = InputPolicy(channels, resolution, augment=True)
    images = torch.randint(0, 256, (b, 3, image_size, image_size), dtype=torch.uint8).to(device)
    t_prep = _timed(lambda: policy.prepare(images), cuda) / b
    t_aug = _timed(lambda: policy.train_batch(images), cuda) / b - t_prep
    return t_prep, max(t_aug, 0.0)


def _timed(fn, cuda: bool, reps: int = 2) -> float:
    """Seconds of one call: the best of ``reps`` after a warm-up (other load only adds)."""
    fn()  # warm-up: allocations, kernel selection
    best = float("inf")
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


# --- a whole study -----------------------------------------------------------------------
@dataclass
class StudyCost:
    """Counted cost of a set of runs, with and without the prefix cache.

    Attributes:
        cached, uncached: work per architecture.
        seconds_cached, seconds_uncached: seconds per part on the calibrated machine
            (NaN when not calibrated).
        by_target: seconds with caching, per target.
        throughput: the calibration per (arch, resolution).
        uncounted: runs whose source is missing (architecture unknown).
    """

    cached: Work = field(default_factory=Work)
    uncached: Work = field(default_factory=Work)
    seconds_cached: dict[str, float] = field(default_factory=dict)
    seconds_uncached: dict[str, float] = field(default_factory=dict)
    by_target: dict[str, float] = field(default_factory=dict)
    throughput: dict[tuple, Throughput] = field(default_factory=dict)
    uncounted: int = 0

    @property
    def total_cached(self) -> float:
        return sum(self.seconds_cached.values()) if self.seconds_cached else math.nan

    @property
    def total_uncached(self) -> float:
        return sum(self.seconds_uncached.values()) if self.seconds_uncached else math.nan

    @property
    def ratio(self) -> float:
        """Uncached / cached time (or FLOPs when not calibrated)."""
        if self.seconds_cached:
            return self.total_uncached / self.total_cached
        return self.uncached.flops / self.cached.flops if self.cached.flops else math.nan

    def breakdown(self) -> list[tuple[str, float, float]]:
        """``(part description, seconds, share)`` of the cached cost, largest first."""
        total = self.total_cached
        rows = [(PART_NAMES[k], s, s / total if total else math.nan)
                for k, s in self.seconds_cached.items() if s > 0]
        return sorted(rows, key=lambda r: -r[1])


def study_cost(shapes: list[tuple[RunShape, tuple]], share_cache: bool = True,
               rates: dict[tuple, Throughput] | None = None) -> StudyCost:
    """Cost of runs with and without caching.

    Args:
        shapes: ``(run shape, cache key)`` per run; runs with the same cache key (source,
            target, resolution, depth, seed) share cached prefix outputs when
            ``share_cache``. Training images of one seed are nested, so a key's training
            images are its largest n per seed (at most the training set).
        share_cache: the study's feature cache is on (else each run fills its own).
        rates: throughput per ``(arch, resolution)``; without it only FLOPs are counted.
    """
    out = StudyCost(throughput=dict(rates or {}))
    fills = _shared_fills(shapes) if share_cache else {}
    seconds_c: dict[str, float] = dict.fromkeys(PARTS, 0.0)
    seconds_u: dict[str, float] = dict.fromkeys(PARTS, 0.0)
    for shape, key in shapes:
        cached = run_work(shape, cache=True, fill=not share_cache)
        uncached = run_work(shape, cache=False)
        out.cached += cached
        out.uncached += uncached
        rate = (rates or {}).get((shape.arch, shape.resolution))
        if rate is not None:
            sc = rate.seconds(cached)
            _add(seconds_c, sc)
            _add(seconds_u, rate.seconds(uncached))
            target = key[1] if len(key) > 1 else "?"
            out.by_target[target] = out.by_target.get(target, 0.0) + sum(sc.values())
    for (arch, resolution, _), fill in fills.items():
        out.cached += fill
        rate = (rates or {}).get((arch, resolution))
        if rate is not None:
            _add(seconds_c, rate.seconds(fill))
    if rates:
        out.seconds_cached, out.seconds_uncached = seconds_c, seconds_u
    return out


def _add(total: dict[str, float], part: dict[str, float]) -> None:
    for k, v in part.items():
        total[k] += v


def _shared_fills(shapes: list[tuple[RunShape, tuple]]) -> dict[tuple, Work]:
    """One cache fill per key: each training subset's largest n per seed, the test set once."""
    train: dict[tuple, dict[int, int]] = {}
    test: dict[tuple, int] = {}
    info: dict[tuple, tuple[RunShape, PartFlops]] = {}
    for shape, key in shapes:
        p = count_flops(shape.arch, shape.resolution, shape.unfrozen, shape.num_classes)
        cache_train, cache_test = cached_splits(p.depth, shape.augmented,
                                                _stage_count(shape.arch) - 1)
        k = (*key[:-1], p.depth, shape.resolution)
        info[k] = (shape, p)
        if cache_train:
            seeds = train.setdefault(k, {})
            seeds[key[-1]] = max(seeds.get(key[-1], 0), shape.n)
        if cache_test:
            test[k] = shape.test
    fills: dict[tuple, Work] = {}
    for k, (shape, p) in info.items():
        images = sum(train.get(k, {}).values())
        images = min(images, shape.train_size) if shape.train_size else images
        images += test.get(k, 0)
        fills[(shape.arch, shape.resolution, k)] = Work(cache_fill=images * p.prefix,
                                                        prepared=images)
    return fills
