"""Train source models: natural, PGD adversarial or FGSM-RS adversarial training.

Runs on one device, or under ``torchrun`` with DistributedDataParallel (gloo on the CPU,
NCCL on CUDA); only rank 0 writes the checkpoint.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from robust_transfer.data import ImageArrays, InputPolicy, balanced_subset, load_dataset
from robust_transfer.data.loader import device_budget
from robust_transfer.data.streaming import is_streaming, streaming_split
from robust_transfer.engine.attacks import AttackConfig
from robust_transfer.engine.training import (
    EpochMetrics,
    FitOptions,
    OptimConfig,
    TensorLoader,
    fit,
    resolve_device,
)
from robust_transfer.errors import ConfigError
from robust_transfer.models import IMAGENET_MEAN, IMAGENET_STD, TransferModel, build_architecture

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """A source-training run.

    Attributes:
        arch: registered architecture.
        dataset: source dataset name.
        epochs: training epochs.
        batch_size: per-process batch size.
        optim: optimiser and schedule.
        adversary: None for natural training, else the training attack (PGD / FGSM-RS).
        eval_attack: the attack for robust accuracy (default PGD-20, step 2.5*eps/20).
        augment: random crop/flip/jitter during training.
        input_size: model input size (default: the dataset's native size).
        train_images: train on the first n images of a seeded shuffle (None = all).
        eval_images: measure clean and robust accuracy on this many test images
            (class-balanced, fixed; None = the whole test split). PGD-20 on a full test
            split costs 21 forward-backward passes per image.
        loader_workers: data-loading processes for ``folder:PATH`` datasets.
        seed: everything random.
    """

    arch: str = "small_resnet"
    dataset: str = "fmnist"
    epochs: int = 5
    batch_size: int = 128
    optim: OptimConfig = field(default_factory=OptimConfig)
    adversary: AttackConfig | None = None
    eval_attack: AttackConfig | None = None
    augment: bool = False
    input_size: int | None = None
    train_images: int | None = None
    eval_images: int | None = None
    seed: int = 0
    loader_workers: int = 4

    @property
    def method(self) -> str:
        if self.adversary is None:
            return "natural"
        return "fgsm_rs" if self.adversary.method == "fgsm_rs" else "pgd"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adversary"] = self.adversary.to_dict() if self.adversary else None
        d["eval_attack"] = attack.to_dict() if (attack := self.robust_eval_attack()) else None
        return d

    def robust_eval_attack(self) -> AttackConfig | None:
        if self.eval_attack is not None:
            return self.eval_attack
        if self.adversary is None or self.adversary.eps == 0:
            return None
        return AttackConfig(self.adversary.norm, self.adversary.eps, steps=20)


def dataset_stats(images: torch.Tensor, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, repeated to ``channels``."""
    x = images.float().div(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    if len(mean) == 1 and channels == 3:
        mean, std = mean.repeat(3), std.repeat(3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pretrain(cfg: PretrainConfig, data_root: str | None = None, device: str = "auto",
             callback=None, train: ImageArrays | None = None,
             test: ImageArrays | None = None) -> tuple[TransferModel, list[EpochMetrics], dict]:
    """Train a source model; returns the model, its history and metadata for saving.

    Under ``torchrun`` every rank trains its shard with DDP; gradients are averaged and
    BatchNorm statistics taken from rank 0, so all ranks end with identical weights. The
    model is returned in eval mode.
    """
    rank, world = _distributed()
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if is_streaming(cfg.dataset):
        train_loader, test_loader, classes, mean, std, size, n_train = _streaming(cfg)
    else:
        train_loader, test_loader, classes, mean, std, size, n_train = _in_memory(
            cfg, data_root, train, test, dev)
    torch.manual_seed(cfg.seed)
    model = build_architecture(cfg.arch, classes, mean, std, size).to(dev)
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if rank == 0:
        logger.info("pretrain: %s on %d %s images (%s), %d process(es) on %s, %d epochs",
                    cfg.arch, n_train, cfg.dataset, cfg.method, world, dev, cfg.epochs)
    options = FitOptions(cfg.epochs, cfg.optim, cfg.adversary, eval_every=cfg.epochs,
                         eval_attack=cfg.robust_eval_attack(), seed=cfg.seed, device=str(dev))
    history = fit(net, train_loader, test_loader if rank == 0 else None, options, callback,
                  attack_model=model)
    if world > 1:
        _broadcast_buffers(model)
    meta = _metadata(cfg, model, history, n_train, world)
    return model.eval(), history, meta


def _in_memory(cfg: PretrainConfig, data_root, train, test, device: torch.device):
    """Loaders over in-memory splits; the normaliser is the training images' mean/std.

    The uint8 images go to ``device`` once where they fit its budget (else they are
    streamed); batches are resized and augmented there.
    """
    train = train if train is not None else load_dataset(cfg.dataset, "train", data_root)
    test = test if test is not None else load_dataset(cfg.dataset, "test", data_root)
    if cfg.train_images is not None:
        if cfg.train_images > len(train):
            raise ConfigError(f"asked for {cfg.train_images} images; {cfg.dataset} has {len(train)}")
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
        train = train.subset(perm[: cfg.train_images].numpy())
    if cfg.eval_images is not None:
        test = test.subset(balanced_subset(test.labels.numpy(), cfg.eval_images, 0, cfg.dataset))
    size = cfg.input_size or train.info.size
    mean, std = dataset_stats(train.images, 3)
    policy = InputPolicy(3, size, cfg.augment)
    budget = device_budget(device)
    train_loader = TensorLoader(train.images, train.labels, cfg.batch_size, shuffle=True,
                                transform=policy.train_batch, seed=cfg.seed, device=device,
                                budget=budget, name="training images")
    test_loader = TensorLoader(test.images, test.labels, 512, transform=policy.prepare,
                               rank=0, world_size=1, device=device, budget=budget,
                               name="test images")
    return train_loader, test_loader, train.info.num_classes, mean, std, size, len(train)


def _streaming(cfg: PretrainConfig):
    """Loaders that read an ImageNet-style folder from disk; ImageNet's normaliser."""
    if cfg.train_images is not None or cfg.eval_images is not None:
        raise ConfigError("--train-images / --eval-images are for in-memory datasets; "
                          "make a smaller image folder instead")
    size = cfg.input_size or 224
    w = cfg.loader_workers
    train = streaming_split(cfg.dataset, "train", size, cfg.batch_size, cfg.augment, cfg.seed, w)
    test = streaming_split(cfg.dataset, "test", size, 256, False, cfg.seed, w, distributed=False)
    if train.classes != test.classes:
        raise ConfigError(f"{cfg.dataset}: train and val folders have different classes")
    return (train, test, len(train.classes), IMAGENET_MEAN, IMAGENET_STD, size, train.num_images)


def _broadcast_buffers(model: TransferModel) -> None:
    """Give every rank rank 0's BatchNorm statistics.

    DDP broadcasts buffers before each forward, then every rank updates them on its own
    batch, so after the last step they differ by one local update; rank 0's are the ones
    evaluated and saved.
    """
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def _metadata(cfg: PretrainConfig, model: TransferModel, history: list[EpochMetrics],
              n_train: int, world: int) -> dict:
    last = history[-1]
    adv = cfg.adversary
    return {
        "architecture": cfg.arch,
        "num_classes": model.num_classes,
        "input_size": model.input_size,
        "channels": model.channels,
        "mean": model.normalizer.mean.flatten().tolist(),
        "std": model.normalizer.std.flatten().tolist(),
        "source_dataset": cfg.dataset,
        "train_images": n_train,
        "training": cfg.method,
        "norm": adv.norm if adv else "none",
        "eps": adv.eps if adv else 0.0,
        "attack_steps": adv.steps if adv else 0,
        "attack_step_size": adv.alpha if adv else 0.0,
        "epochs": cfg.epochs,
        "clean_acc": last.test_acc,
        "robust_acc": None if last.robust_acc != last.robust_acc else last.robust_acc,
        "test_images": cfg.eval_images,
        "robust_eval": attack.to_dict() if (attack := cfg.robust_eval_attack()) else None,
        "world_size": world,
        "config": cfg.to_dict(),
        "history": [h.to_dict() for h in history],
    }

