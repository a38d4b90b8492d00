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
from robust_transfer.data.subsets import split_validation
from robust_transfer.data.torchdata import as_image_arrays_pair
from robust_transfer.engine.attacks import AttackConfig
from robust_transfer.engine.training import (
    EpochMetrics,
    FitOptions,
    OptimConfig,
    TensorLoader,
    evaluate,
    fit,
    resolve_device,
)
from robust_transfer.errors import ConfigError
from robust_transfer.models import TransferModel, prepare_finetune

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
        val_images: hold out this many class-balanced images of the training pool as a
            validation set (same for every source and seed, disjoint from every run's
            training images, which are then drawn from the rest); evaluated with the test
            set, so epochs and learning rates can be chosen without looking at test. 0: none.
        robust_eps: after training, measure robust accuracy of the fine-tuned model under
            PGD at this radius (pixels in [0, 1]) on ``robust_images`` class-balanced test
            images; ``None``: not measured.
        robust_norm, robust_steps: the attack (step size 2.5 * eps / steps, no random
            start, the robustness library's evaluation convention).
        robust_images: test images attacked (a fixed class-balanced subset).

    The last five fields are left out of :meth:`to_dict` at their defaults, so adding them
    changed no existing run id.
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
    val_images: int = 0
    robust_eps: float | None = None
    robust_norm: str = "linf"
    robust_steps: int = 20
    robust_images: int = 500

    def __post_init__(self) -> None:
        self.optim()  # validates lr, momentum, schedule
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be positive, got {self.batch_size}")
        if self.augment not in (True, False, "auto"):
            raise ConfigError(f"augment must be true, false or 'auto', got {self.augment!r}")
        if self.resolution is not None and self.resolution < 8:
            raise ConfigError(f"resolution must be at least 8 pixels, got {self.resolution}")
        if self.val_images < 0:
            raise ConfigError(f"val_images must be 0 (no validation set) or positive, got {self.val_images}")
        if self.robust_eps is not None:
            if not self.robust_eps > 0 or self.robust_eps == float("inf"):
                raise ConfigError(f"robust_eps must be a positive finite radius, got {self.robust_eps} "
                                  "(leave it out to skip robust evaluation)")
            self.robust_attack()  # validates norm and steps
            if self.robust_images < 1:
                raise ConfigError(f"robust_images must be positive, got {self.robust_images}")

    def robust_attack(self) -> AttackConfig:
        """The PGD evaluation attack (``robust_eps`` must be set)."""
        return AttackConfig(self.robust_norm, float(self.robust_eps), self.robust_steps)

    def optim(self) -> OptimConfig:
        return OptimConfig(self.lr, self.momentum, self.weight_decay, self.schedule)

    def to_dict(self) -> dict:
        d = asdict(self)
        for name, default in _OPTIONAL_DEFAULTS.items():
            if d[name] == default:
                del d[name]  # run ids hash this dict: fields added later must not change them
        return d


_OPTIONAL_DEFAULTS = {"val_images": 0, "robust_eps": None, "robust_norm": "linf",
                      "robust_steps": 20, "robust_images": 500}


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
    indices, val_indices = training_indices(train, n, seed, recipe.val_images)
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
    val_loader = None
    if len(val_indices):
        val_split = train.subset(val_indices)
        val_loader = (_cached_eval_loader(model, val_split, val_indices, policy, recipe.batch_size,
                                          dev, feature_store or MemoryFeatureStore(), key)
                      if cache else TensorLoader(val_split.images, val_split.labels,
                                                 max(256, recipe.batch_size), transform=policy.prepare))
    history = fit(trainer, train_loader, test_loader, options, callback, val_loader=val_loader)
    model.eval()
    info = {"policy": asdict(policy), "frozen_depth": model.frozen_depth}
    if recipe.robust_eps is not None:
        robust_idx = balanced_subset(test.labels.numpy(), min(recipe.robust_images, len(test)),
                                     0, f"{test.info.name}/robust")
        loader = TensorLoader(test.images[torch.as_tensor(robust_idx)],
                              test.labels[torch.as_tensor(robust_idx)], max(128, recipe.batch_size),
                              transform=policy.prepare)
        t0 = time.perf_counter()
        _, history[-1].robust_acc = evaluate(model, loader, recipe.robust_attack(), dev)
        info["robust_seconds"] = time.perf_counter() - t0
        info["robust_images"] = len(robust_idx)
    return FinetuneResult(model, history, len(indices), indices, time.perf_counter() - start,
                          cache, info)


def training_indices(train: ImageArrays, n: int | None, seed: int,
                     val_images: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The run's training images and the held-out validation images (indices into ``train``).

    Without a validation set, the subset is drawn from the whole split (as the paper
    did); with one, from the rest of the split, so the two never overlap.
    """
    labels = train.labels.numpy()
    if not val_images:
        return balanced_subset(labels, n, seed, train.info.name), np.zeros(0, dtype=np.int64)
    pool, val = split_validation(labels, val_images, train.info.name)
    if n is not None and n > len(pool):
        raise ConfigError(f"n={n} does not fit beside {val_images} validation images: "
                          f"{train.info.name} has {len(labels)} training images; use n <= "
                          f"{len(pool)} or fewer val_images")
    return pool[balanced_subset(labels[pool], n, seed, train.info.name)], val


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


def _cached_eval_loader(model, split: ImageArrays, split_indices: np.ndarray, policy, batch_size,
                        dev, store, key) -> TensorLoader:
    """Validation images through the cached prefix (they are never augmented).

    ``split`` holds the images ``split_indices`` of the training split; their prefix
    outputs share the training split's cache key.
    """
    depth = model.frozen_depth
    pooled = depth >= len(model.stages())
    position = {int(i): k for k, i in enumerate(split_indices)}

    def run(idx: np.ndarray) -> torch.Tensor:
        rows = torch.as_tensor([position[int(i)] for i in idx])
        return prefix_outputs(model, split.images[rows], policy, depth, pooled, dev)

    h = store.get_or_compute({**key, "depth": depth, "pooled": pooled, "split": "train"},
                             split_indices, run)
    return TensorLoader(h, split.labels, max(256, batch_size))
