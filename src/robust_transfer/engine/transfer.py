"""Fine-tune a source model on a target: new head, last k blocks unfrozen, n images.

The frozen prefix (normaliser, stem and the blocks before the unfrozen ones) is in eval
mode and its weights never change, so on an un-augmented image its output is a fixed
function of (source, target, split, resolution, depth). Such outputs are computed once per
image and the model runs only its trainable suffix on them: with 0 unfrozen blocks that
is the head on pooled features, with no autograd through the backbone at all.

* Test images are never augmented: their prefix outputs are always cached (when there
  is a prefix), also when training is augmented. Evaluation of the full model in eval
  mode is ``suffix(prefix(x))`` by construction, so evaluating the suffix on cached
  outputs gives the same accuracy as evaluating the whole model.
* Un-augmented training images are cached the same way; augmented ones change every
  epoch, so training then runs the whole model.
* ``unfrozen="all"`` has no frozen prefix: nothing is cached.
* Outputs held in memory are bounded by :data:`PREFIX_MEMORY_LIMIT` (2 GiB; a split
  beyond it runs the whole model). A :class:`~robust_transfer.engine.features.DiskFeatureStore`
  hands the test split back memory-mapped, so there the test outputs are cached at any
  size (ResNet-50 at 3 unfrozen blocks: 7.5 GiB for 10,000 images), bounded by the
  cache's disk budget instead.

:func:`cache_plan` says which splits a run caches at which depth (the cost model of
:mod:`robust_transfer.study.estimate` uses it). A ``feature_store`` (see
:class:`FeatureStore`) lets many runs share those outputs, on disk
(:class:`robust_transfer.engine.features.DiskFeatureStore`).

Bytes per image of the cached prefix output of ResNet-50 at 224 px (from
:func:`prefix_bytes_per_image`; the test checks these numbers):

=========  =====================  ===========  ==========  ==========
unfrozen   prefix ends after      shape        float32     float16
=========  =====================  ===========  ==========  ==========
0          layer4.2, pooled       2048         8 KiB       4 KiB
1          layer4.1               2048x7x7     392 KiB     196 KiB
3          layer3.5               1024x14x14   784 KiB     392 KiB
9          layer2.3               512x28x28    1568 KiB    784 KiB
all        (no prefix)            -            0           0
=========  =====================  ===========  ==========  ==========

CIFAR-10's 10,000 test images at 3 unfrozen blocks thus take 7.5 GiB in float32 per
source, 3.7 GiB in float16.

**Half precision** (``Recipe(feature_dtype="float16")``): prefix outputs are rounded to
float16 when computed (in memory and on disk alike, so a run's result does not depend on
whether a disk cache is used) and widened back to float32 for the suffix. Each element
then satisfies ``|fp16(x) - x| <= 2**-11 * |x|`` for ``2**-14 <= |x| <= 65504`` and
``|fp16(x) - x| <= 2**-25`` below that; a prefix output beyond 65504 would become
infinite, so such a run is refused (:class:`HalfPrecisionError`) rather than rounded.
float16 keeps 11 significant bits against bfloat16's 8. Measured over 48 small runs
(benchmarks/bench_feature_precision.py: digits and Fashion-MNIST targets, two sources,
unfrozen 0 and 1, n 100 and 400, 3 seeds), fine-tuned test accuracy with float16 storage
differed from float32 by at most 0.01 points (one Fashion-MNIST test image), bfloat16 by
up to 0.22 points; the stated and tested bound is 1 point. The default stays
float32: it equals the uncached computation exactly, and float16 changes results (its
runs get their own ids: ``feature_dtype`` enters the config when not float32).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn

from robust_transfer.data import ImageArrays, InputPolicy, balanced_subset, default_policy
from robust_transfer.data.loader import DeviceBudget, device_budget
from robust_transfer.data.subsets import check_validation_fit, split_validation
from robust_transfer.data.torchdata import as_image_arrays_pair
from robust_transfer.engine.features import PrefixKey, format_bytes
from robust_transfer.engine.recipe import FEATURE_DTYPES, Recipe  # noqa: F401 (re-exported)
from robust_transfer.engine.training import (
    EpochMetrics,
    FitOptions,
    TensorLoader,
    evaluate,
    fit,
    resolve_device,
)
from robust_transfer.errors import ConfigError
from robust_transfer.models import TransferModel, prepare_finetune
from robust_transfer.models.finetune import ALL, parse_unfrozen
from robust_transfer.models.modes import eval_mode

logger = logging.getLogger(__name__)

# prefix outputs larger than this (bytes, train + test) are not precomputed in memory
PREFIX_MEMORY_LIMIT = 2 * 1024**3
FLOAT16_MAX = 65504.0


class HalfPrecisionError(ConfigError):
    """A prefix output is outside what float16 storage holds within its stated bound."""


class FeatureStore(Protocol):
    """Shares frozen-prefix outputs between runs.

    ``get_or_compute(key, indices, compute)`` returns the prefix outputs of the images
    ``indices`` of the split described by ``key`` (a
    :class:`~robust_transfer.engine.features.PrefixKey`), calling
    ``compute(missing_indices) -> Tensor`` for any it does not hold yet.
    """

    def get_or_compute(self, key: PrefixKey, indices: np.ndarray, compute) -> torch.Tensor: ...


class MemoryFeatureStore:
    """No sharing: computes what is asked each time."""

    def get_or_compute(self, key: PrefixKey, indices: np.ndarray, compute) -> torch.Tensor:
        return compute(np.asarray(indices))


@dataclass
class FinetuneResult:
    """A fine-tuned model and how it got there.

    ``cached_prefix`` is true when the training or the test images ran from prefix
    outputs computed once (``info["cache"]``: which, see :class:`CachePlan`).
    """

    model: TransferModel
    history: list[EpochMetrics]
    n_train: int
    train_indices: np.ndarray
    seconds: float
    cached_prefix: bool
    info: dict = field(default_factory=dict)

    @property
    def test_acc(self) -> float:
        return self.history[-1].test_acc


@dataclass(frozen=True)
class CachePlan:
    """Which prefix outputs a run computes once (and a feature store may share).

    Attributes:
        depth: frozen stages (stem + frozen blocks) whose output is cached; 0 = none.
        pooled: the cached output is the pooled feature vector (0 unfrozen blocks).
        train: the training images' outputs are cached (only without augmentation).
        test: the test images' outputs are cached.
    """

    depth: int
    pooled: bool
    train: bool
    test: bool

    @property
    def any(self) -> bool:
        return self.train or self.test


def frozen_depth_for(n_blocks: int, unfrozen: int | str) -> int:
    """Stages before the unfrozen ones (stem counts as one); 0 for ``"all"``."""
    unfrozen = parse_unfrozen(unfrozen)
    return 0 if unfrozen == ALL else 1 + n_blocks - min(int(unfrozen), n_blocks)


def cache_plan(n_blocks: int, unfrozen: int | str, augment: bool, *, bytes_per_image: int = 0,
               n_train: int = 0, n_test: int = 0,
               memory_limit: int | None = None, test_on_disk: bool = False) -> CachePlan:
    """What :func:`finetune` caches for a run (a pure function of the run's shape).

    Args:
        n_blocks: residual blocks of the source architecture (ResNet-50: 16; see
            :func:`robust_transfer.study.resolve.arch_blocks`).
        unfrozen: blocks trained besides the head, or ``"all"``.
        augment: whether training images are augmented (``"auto"`` resolved: colour
            targets yes, MNIST-likes no; see :func:`robust_transfer.data.default_policy`).
        bytes_per_image: from :func:`prefix_bytes_per_image`; with ``n_train`` and
            ``n_test``, applies the in-memory limit (0: not applied).
        n_train, n_test: training images of the run and test images of the target.
        memory_limit: the most bytes of prefix outputs a run holds in memory: the test
            outputs are kept first, then the training ones if they fit too (default
            :data:`PREFIX_MEMORY_LIMIT`).
        test_on_disk: the store hands whole splits back memory-mapped
            (:class:`~robust_transfer.engine.features.DiskFeatureStore`): the test outputs
            are then cached whatever their size (the disk budget bounds them instead).

    Returns:
        A :class:`CachePlan`. Prefix work per run: each cached image's prefix runs once
        (zero times when a shared store already holds it); uncached images run the whole
        model every epoch (training) or every evaluation (test).
    """
    depth = frozen_depth_for(n_blocks, unfrozen)
    if depth == 0:
        return CachePlan(0, False, False, False)
    memory_limit = PREFIX_MEMORY_LIMIT if memory_limit is None else memory_limit
    test = test_on_disk or bytes_per_image * n_test <= memory_limit
    test_in_memory = 0 if test_on_disk else n_test * test
    train = not augment and bytes_per_image * (n_train + test_in_memory) <= memory_limit
    return CachePlan(depth, depth == n_blocks + 1, train, test)


def prefix_bytes_per_image(model: TransferModel, unfrozen: int | str, resolution: int | None = None,
                           dtype: str | torch.dtype = "float32") -> int:
    """Bytes of one image's cached prefix output (0 when there is no frozen prefix).

    Runs the model on the meta device (shapes only: no memory, no arithmetic), so asking
    about ResNet-50 at 224 px costs nothing. The model itself is not changed.

    Args:
        model: the source model (any device).
        unfrozen: blocks trained besides the head, or ``"all"``.
        resolution: input size (default: the model's).
        dtype: storage dtype (``"float32"``, ``"float16"`` or a torch dtype).

    Example:
        >>> prefix_bytes_per_image(build_architecture("resnet50"), 3, 224)  # 1024 x 14 x 14 x 4
        802816
    """
    depth = frozen_depth_for(len(model.blocks()), unfrozen)
    if depth == 0:
        return 0
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    size = resolution or model.input_size
    if depth >= len(model.stages()):
        numel = model.feature_dim
    else:
        wrapper = _Prefix(model, depth)
        meta = {k: torch.empty_like(v, device="meta") for k, v in wrapper.state_dict().items()}
        probe = torch.empty(1, model.channels, size, size, device="meta")
        with torch.no_grad():
            numel = torch.func.functional_call(wrapper, meta, (probe,)).numel()
    return numel * torch.empty(0, dtype=dtype).element_size()


class _Prefix(nn.Module):
    """``model.forward_prefix(x, depth)`` as a module (for :func:`torch.func.functional_call`)."""

    def __init__(self, model: TransferModel, depth: int) -> None:
        super().__init__()
        self.model, self.depth = model, depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_prefix(x, self.depth)


class _Suffix(nn.Module):
    """The trainable part of a model that starts from prefix outputs."""

    def __init__(self, model: TransferModel, depth: int, pooled: bool) -> None:
        super().__init__()
        self.model, self.depth, self.pooled = model, depth, pooled

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h.to(self.model.head.weight.dtype)  # float16 storage is widened before use
        return self.model.head(h) if self.pooled else self.model.forward_from(h, self.depth)

    def train(self, mode: bool = True) -> _Suffix:
        self.training = mode
        self.model.train(mode)  # keeps frozen stages in eval mode
        return self


def finetune(source: TransferModel, train: ImageArrays, test: ImageArrays, *,
             n: int | None = None, unfrozen: int | str = 0, epochs: int = 10, seed: int = 0,
             recipe: Recipe | None = None, device: str = "auto", source_id: str = "",
             feature_store: FeatureStore | None = None, callback=None,
             checkpoint: str | None = None,
             data_budget: DeviceBudget | None = None) -> FinetuneResult:
    """Fine-tune a copy of ``source`` on ``n`` images of ``train``; test on ``test``.

    Args:
        source: the source model (not modified).
        train, test: target splits: ImageArrays, or torch ``Dataset``/``DataLoader`` of
            ``(image, label)`` (materialised by :func:`~robust_transfer.data.torchdata.as_image_arrays`).
        n: number of training images (class-balanced, nested, seeded); None = all.
        unfrozen: blocks trained besides the head (0 = head only, ``"all"``).
        epochs: training epochs.
        seed: selects the subset, the head's initialisation and the batch order.
        recipe: optimiser, batch size, augmentation, resolution (default: the paper's).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        source_id: identifies the source weights (e.g. sha256) for the feature store.
        feature_store: shares frozen-prefix outputs between runs (default: none).
        callback: progress events, see :func:`robust_transfer.engine.training.fit`.
        checkpoint: save the training state here after every epoch, and resume from it
            when it exists (``FitOptions.checkpoint``); same result as without.
        data_budget: device memory the run's data may take (its images, labels and
            cached prefix outputs are moved to ``device`` once where they fit, else
            streamed; default: :func:`~robust_transfer.data.loader.device_budget` of the
            whole device). ``info["streamed"]`` lists what did not fit.

    Returns:
        A :class:`FinetuneResult`; ``cached_prefix`` is true when any split ran from
        cached prefix outputs, ``info["cache"]`` says which (see :func:`cache_plan`).

    Raises:
        ConfigError: n too large, too many unfrozen blocks, bad recipe values.
        HalfPrecisionError: ``feature_dtype="float16"`` and a prefix output beyond
            float16's range.
    """
    train, test = as_image_arrays_pair(train, test)  # torch Datasets/DataLoaders too
    recipe = recipe or Recipe()
    start = time.perf_counter()
    if train.info.num_classes != test.info.num_classes:
        raise ConfigError("train and test splits have different classes")
    indices, val_indices = training_indices(train, n, seed, recipe.val_images)
    dev = resolve_device(device)
    model = prepare_finetune(copy.deepcopy(source), train.info.num_classes, unfrozen,
                             recipe.head_init, seed).to(dev)
    policy = default_policy(train.info, model.channels, recipe.resolution or model.input_size,
                            recipe.augment)
    options = FitOptions(epochs=epochs, optim=recipe.optim(), eval_every=recipe.eval_every,
                         seed=seed, device=str(dev), checkpoint=checkpoint)
    plan = cache_plan(len(model.blocks()), unfrozen, policy.augment,
                      bytes_per_image=prefix_bytes_per_image(model, unfrozen, policy.size,
                                                             recipe.feature_dtype),
                      n_train=len(indices), n_test=len(test) + len(val_indices),
                      test_on_disk=getattr(feature_store, "memory_mapped", False))
    prefix = _PrefixCache(model, policy, dev, feature_store or MemoryFeatureStore(), plan,
                          PrefixKey(source_id or _weights_id(source), train.info.name, "train",
                                    policy.size, plan.depth, plan.pooled, recipe.feature_dtype))
    budget = data_budget if data_budget is not None else device_budget(dev)
    trainer, train_loader, evaluator, test_loader, val_loader = _loaders(
        model, prefix, plan, policy, train, test, indices, val_indices, recipe.batch_size, seed,
        dev, budget)
    # finetune sets no adversary, so fit uses ``attack_model`` only to evaluate: the
    # suffix on cached test outputs, which in eval mode equals the whole model
    history = fit(trainer, train_loader, test_loader, options, callback, attack_model=evaluator,
                  val_loader=val_loader)
    model.eval()
    info = {"policy": asdict(policy), "frozen_depth": model.frozen_depth, "cache": asdict(plan),
            "feature_dtype": recipe.feature_dtype, "device_budget": budget.total,
            "device_bytes": budget.used, "streamed": list(budget.streamed)}
    if recipe.robust_eps is not None:
        robust_idx = balanced_subset(test.labels.numpy(), min(recipe.robust_images, len(test)),
                                     0, f"{test.info.name}/robust")
        loader = TensorLoader(test.images[torch.as_tensor(robust_idx)],
                              test.labels[torch.as_tensor(robust_idx)], max(128, recipe.batch_size),
                              transform=policy.prepare, device=dev)
        t0 = time.perf_counter()
        _, history[-1].robust_acc = evaluate(model, loader, recipe.robust_attack(), dev)
        info["robust_seconds"] = time.perf_counter() - t0
        info["robust_images"] = len(robust_idx)
    return FinetuneResult(model, history, len(indices), indices, time.perf_counter() - start,
                          plan.any, info)


def _loaders(model: TransferModel, prefix: _PrefixCache, plan: CachePlan, policy: InputPolicy,
             train: ImageArrays, test: ImageArrays, indices: np.ndarray, val_indices: np.ndarray,
             batch_size: int, seed: int, device: torch.device, budget: DeviceBudget):
    """The run's training, test and validation loaders, on ``device`` within ``budget``.

    Each split is either its uint8 images (resized, and for training augmented, on the
    device at every batch) or its cached prefix outputs; whatever does not fit the budget
    is streamed from host memory, in this order of preference: training, test, validation.
    """
    eval_batch = max(256, batch_size)
    idx, val_idx = torch.as_tensor(indices), torch.as_tensor(val_indices)
    on: dict[str, Any] = {"device": device, "budget": budget}
    trainer: nn.Module
    evaluator: nn.Module
    if plan.train:
        trainer, train_loader = prefix.suffix, TensorLoader(
            prefix.outputs(train, "train", indices), train.labels[idx], batch_size, shuffle=True,
            seed=seed, name="cached training outputs", **on)
    else:
        trainer, train_loader = model, TensorLoader(
            train.images[idx], train.labels[idx], batch_size, shuffle=True,
            transform=policy.train_batch, seed=seed, name="training images", **on)
    val_loader = None
    if plan.test:  # validation images are never augmented either: they follow the test ones
        evaluator, test_loader = prefix.suffix, TensorLoader(
            prefix.outputs(test, "test", np.arange(len(test))), test.labels, eval_batch,
            name="cached test outputs", **on)
        if len(val_indices):
            val_loader = TensorLoader(prefix.outputs(train, "train", val_indices),
                                      train.labels[val_idx], eval_batch,
                                      name="cached validation outputs", **on)
    else:
        evaluator, test_loader = model, TensorLoader(
            test.images, test.labels, eval_batch, transform=policy.prepare, name="test images", **on)
        if len(val_indices):
            val_loader = TensorLoader(train.images[val_idx], train.labels[val_idx], eval_batch,
                                      transform=policy.prepare, name="validation images", **on)
    if budget.streamed:
        logger.info("finetune: %s beyond the device budget of %s: streamed from pinned host "
                    "memory with asynchronous copies", ", ".join(budget.streamed),
                    format_bytes(budget.total or 0))
    return trainer, train_loader, evaluator, test_loader, val_loader


def training_indices(train: ImageArrays, n: int | None, seed: int,
                     val_images: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The run's training images and the held-out validation images (indices into ``train``).

    Without a validation set, the subset is drawn from the whole split (as the paper
    did); with one, from the rest of the split, so the two never overlap.
    """
    labels = train.labels.numpy()
    if not val_images:
        return balanced_subset(labels, n, seed, train.info.name), np.zeros(0, dtype=np.int64)
    check_validation_fit(len(labels), len(np.unique(labels)), val_images, n, train.info.name)
    pool, val = split_validation(labels, val_images, train.info.name)
    return pool[balanced_subset(labels[pool], n, seed, train.info.name)], val


class _PrefixCache:
    """Prefix outputs of one run's splits, through a feature store, in the recipe's dtype."""

    def __init__(self, model: TransferModel, policy: InputPolicy, device: torch.device,
                 store: FeatureStore, plan: CachePlan, key: PrefixKey) -> None:
        self.model, self.policy, self.device, self.store, self.plan = model, policy, device, store, plan
        self.key, self.dtype = key, key.dtype
        self.suffix = _Suffix(model, plan.depth, plan.pooled)

    def outputs(self, split: ImageArrays, name: str, idx: np.ndarray) -> torch.Tensor:
        def compute(missing: np.ndarray) -> torch.Tensor:
            h = prefix_outputs(self.model, split.images[torch.as_tensor(missing)], self.policy,
                               self.plan.depth, self.plan.pooled, self.device)
            return to_storage(h, self.dtype, f"{split.info.name} {name} images")

        return self.store.get_or_compute(replace(self.key, split=name), idx, compute)


def to_storage(h: torch.Tensor, dtype: str, what: str = "prefix outputs") -> torch.Tensor:
    """``h`` (float32) rounded to the storage ``dtype``.

    Raises:
        HalfPrecisionError: float16 asked for and some |value| exceeds 65504 (it would
            become infinite, breaking the stated error bound).
    """
    if dtype == "float32":
        return h.float()
    peak = float(h.abs().max()) if h.numel() else 0.0
    if peak > FLOAT16_MAX:
        raise HalfPrecisionError(
            f"{what}: a frozen-prefix output reaches {peak:.4g}, beyond float16's largest "
            f"value {FLOAT16_MAX:g}; float16 storage would turn it into infinity: use "
            "feature_dtype float32 for this source")
    return h.to(torch.float16)


def _weights_id(model: TransferModel) -> str:
    """A hash of every weight and buffer when the caller gives no source id.

    All bytes, not a prefix of each tensor: a shared feature store keyed by a collision
    would silently hand one source's features to another (ResNet-50: ~0.2 s).
    """
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def prefix_outputs(model: TransferModel, images: torch.Tensor, policy: InputPolicy, depth: int,
                   pooled: bool, device: torch.device | str | None = None,
                   batch_size: int = 256) -> torch.Tensor:
    """Outputs of the first ``depth`` stages (pooled if ``pooled``) for uint8 ``images``.

    The one feature extractor of the package (influence uses it with ``pooled=True`` and
    every stage): the model runs in eval mode, restored after (even on an error), without
    autograd, in batches, never augmented.

    Args:
        model: a :class:`~robust_transfer.models.arch.TransferModel`.
        images: uint8 ``[N, C, H, W]``.
        policy: maps images to model inputs (its ``prepare``).
        depth: stages to run (``len(model.stages())`` for the penultimate features).
        pooled: pool the output to ``[N, feature_dim]``.
        device: where to run (default: the model's).
        batch_size: images per forward pass.

    Returns:
        float32 ``[N, ...]`` on the CPU.
    """
    device = device if device is not None else next(model.parameters()).device
    out = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = policy.prepare(images[start: start + batch_size].to(device))  # resized there
            h = model.forward_prefix(x, depth)
            out.append((model.pool(h) if pooled else h).float().cpu())
    if not out:
        return torch.empty(0)
    return torch.cat(out)
