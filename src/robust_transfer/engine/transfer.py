"""Fine-tune a source model on a target: new head, last k blocks unfrozen, n images.

When the frozen prefix sees un-augmented inputs, its outputs are computed once per image
and training runs only the trainable suffix: with 0 unfrozen blocks that is the head on
pooled features, with no autograd through the backbone at all. A ``feature_store`` (see
:class:`FeatureStore`) lets many runs share those prefix outputs, on disk.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn as nn

from robust_transfer.data import ImageArrays, InputPolicy, balanced_subset, default_policy
from robust_transfer.data.torchdata import as_image_arrays_pair
from robust_transfer.errors import ConfigError
from robust_transfer.models import TransferModel, prepare_finetune
from robust_transfer.engine.training import (
    EpochMetrics,
    FitOptions,
    OptimConfig,
    TensorLoader,
    fit,
    resolve_device,
)

# prefix outputs larger than this (bytes, train + test) are not precomputed in memory
PREFIX_MEMORY_LIMIT = 2 * 1024**3


@dataclass(frozen=True)
class Recipe:
    """The fine-tuning recipe (defaults: the paper's, via the robustness library).

    Attributes:
        lr, momentum, weight_decay, schedule: see :class:`OptimConfig`.
        batch_size: examples per step (128).
        augment: ``"auto"`` (augment colour targets, not MNIST-likes, as the paper),
            ``True`` or ``False``.
        resolution: input size; default the source model's (the paper resized to 224).
        head_init: ``"normal"`` (N(0, 0.01^2)), ``"paper"`` (N(0, 1)) or ``"torch"``.
        eval_every: test every this many epochs (and at the last).
    """

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    batch_size: int = 128
    augment: bool | str = "auto"
    resolution: int | None = None
    head_init: str = "normal"
    eval_every: int = 1

    def __post_init__(self) -> None:
        self.optim()  # validates lr, momentum, schedule
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be positive, got {self.batch_size}")
        if self.augment not in (True, False, "auto"):
            raise ConfigError(f"augment must be true, false or 'auto', got {self.augment!r}")
        if self.resolution is not None and self.resolution < 8:
            raise ConfigError(f"resolution must be at least 8 pixels, got {self.resolution}")

    def optim(self) -> OptimConfig:
        return OptimConfig(self.lr, self.momentum, self.weight_decay, self.schedule)

    def to_dict(self) -> dict:
        return asdict(self)


class FeatureStore(Protocol):
    """Shares frozen-prefix outputs between runs.

    ``get_or_compute(key, indices, compute)`` returns the prefix outputs of the images
    ``indices`` of the split described by ``key`` (a dict: source id, dataset, split,
    resolution, depth, pooled), calling ``compute(missing_indices) -> Tensor`` for any it
    does not hold yet.
    """

    def get_or_compute(self, key: dict, indices: np.ndarray, compute) -> torch.Tensor: ...


class MemoryFeatureStore:
    """No sharing: computes what is asked each time."""

    def get_or_compute(self, key: dict, indices: np.ndarray, compute) -> torch.Tensor:
        return compute(np.asarray(indices))


@dataclass
class FinetuneResult:
    """A fine-tuned model and how it got there."""

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


class _Suffix(nn.Module):
    """The trainable part of a model that starts from prefix outputs."""

    def __init__(self, model: TransferModel, depth: int, pooled: bool) -> None:
        super().__init__()
        self.model, self.depth, self.pooled = model, depth, pooled

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.head(h) if self.pooled else self.model.forward_from(h, self.depth)

    def train(self, mode: bool = True) -> _Suffix:
        self.training = mode
        self.model.train(mode)  # keeps frozen stages in eval mode
        return self


def finetune(source: TransferModel, train: ImageArrays, test: ImageArrays, *,
             n: int | None = None, unfrozen: int | str = 0, epochs: int = 10, seed: int = 0,
             recipe: Recipe | None = None, device: str = "auto", source_id: str = "",
             feature_store: FeatureStore | None = None, callback=None) -> FinetuneResult:
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

    Raises:
        ConfigError: n too large, too many unfrozen blocks, bad recipe values.
    """
    train, test = as_image_arrays_pair(train, test)  # torch Datasets/DataLoaders too
    recipe = recipe or Recipe()
    start = time.perf_counter()
    if train.info.num_classes != test.info.num_classes:
        raise ConfigError("train and test splits have different classes")
    indices = balanced_subset(train.labels.numpy(), n, seed, train.info.name)
    dev = resolve_device(device)
    model = prepare_finetune(copy.deepcopy(source), train.info.num_classes, unfrozen,
                             recipe.head_init, seed).to(dev)
    policy = default_policy(train.info, model.channels, recipe.resolution or model.input_size,
                            recipe.augment)
    options = FitOptions(epochs=epochs, optim=recipe.optim(), eval_every=recipe.eval_every,
                         seed=seed, device=str(dev))
    cache = _use_prefix_cache(model, policy, len(indices) + len(test))
    if cache:
        key = {"source": source_id or _weights_id(source), "dataset": train.info.name,
               "resolution": policy.size}
        trainer, train_loader, test_loader = _cached_loaders(
            model, train, test, indices, policy, recipe.batch_size, seed, dev,
            feature_store or MemoryFeatureStore(), key)
    else:
        trainer = model
        train_loader = TensorLoader(train.images[torch.as_tensor(indices)],
                                    train.labels[torch.as_tensor(indices)], recipe.batch_size,
                                    shuffle=True, transform=policy.train_batch, seed=seed)
        test_loader = TensorLoader(test.images, test.labels, max(256, recipe.batch_size),
                                   transform=policy.prepare)
    history = fit(trainer, train_loader, test_loader, options, callback)
    model.eval()
    return FinetuneResult(model, history, len(indices), indices, time.perf_counter() - start,
                          cache, {"policy": asdict(policy), "frozen_depth": model.frozen_depth})


def _use_prefix_cache(model: TransferModel, policy: InputPolicy, n_images: int) -> bool:
    if policy.augment or model.frozen_depth == 0:
        return False
    per_image = _prefix_numel(model, model.frozen_depth, policy.size) * 4
    return per_image * n_images <= PREFIX_MEMORY_LIMIT


def _prefix_numel(model: TransferModel, depth: int, size: int) -> int:
    if depth >= len(model.stages()):
        return model.feature_dim
    with torch.no_grad():
        probe = torch.zeros(1, model.channels, size, size, device=model.head.weight.device)
        return model.forward_prefix(probe, depth).numel()


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


def _cached_loaders(model, train, test, indices, policy, batch_size, seed, dev, store, key):
    depth = model.frozen_depth
    pooled = depth >= len(model.stages())
    key = {**key, "depth": depth, "pooled": pooled}

    def compute(split: ImageArrays):
        def run(idx: np.ndarray) -> torch.Tensor:
            return prefix_outputs(model, split.images[torch.as_tensor(idx)], policy, depth,
                                  pooled, dev)
        return run

    h_train = store.get_or_compute({**key, "split": "train"}, indices, compute(train))
    h_test = store.get_or_compute({**key, "split": "test"}, np.arange(len(test)), compute(test))
    trainer = _Suffix(model, depth, pooled)
    train_loader = TensorLoader(h_train, train.labels[torch.as_tensor(indices)], batch_size,
                                shuffle=True, seed=seed)
    test_loader = TensorLoader(h_test, test.labels, max(256, batch_size))
    return trainer, train_loader, test_loader


@torch.no_grad()
def prefix_outputs(model: TransferModel, images: torch.Tensor, policy: InputPolicy, depth: int,
                   pooled: bool, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Outputs of the first ``depth`` stages (pooled if ``pooled``) for uint8 ``images``, on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = policy.prepare(images[start: start + batch_size]).to(device)
        h = model.forward_prefix(x, depth)
        out.append((model.pool(h) if pooled else h).float().cpu())
    model.train(was_training)
    if not out:
        return torch.empty(0)
    return torch.cat(out)
