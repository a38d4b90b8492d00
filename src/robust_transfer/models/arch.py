"""Architectures behind one interface: normaliser inside, a blocks view, a resettable head.

Every model is a :class:`TransferModel`: ``normalizer -> stem -> blocks -> pool -> head``.
Inputs are pixels in [0, 1]; the ImageNet (or source dataset) mean/std live in the
model, so attacks, saliency and users never normalise by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torchvision.models import resnet as tv_resnet

from robust_transfer.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_PREFIX = "timm:"


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; buffers so they travel with the state dict."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallResNet(nn.Module):
    """A ResNet for 28-32 px inputs with torchvision's attribute names.

    Three stages of :class:`torchvision.models.resnet.BasicBlock`, no max-pool in the
    stem. Same layout as torchvision's ResNet (``conv1, bn1, relu, maxpool, layerN,
    avgpool, fc``) so one blocks view serves both.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), depth: tuple[int, ...] = (1, 1, 1),
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        in_w = widths[0]
        self.layer_names = []
        for i, (w, d) in enumerate(zip(widths, depth, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(d):
                down = None
                if j == 0 and (stride != 1 or in_w != w):
                    down = nn.Sequential(nn.Conv2d(in_w, w, 1, stride, bias=False), nn.BatchNorm2d(w))
                blocks.append(tv_resnet.BasicBlock(in_w, w, stride if j == 0 else 1, down))
                in_w = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.layer_names.append(f"layer{i + 1}")
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


@dataclass(frozen=True)
class ArchSpec:
    """How to build an architecture and what input it expects by default."""

    name: str
    build: Callable[[int], nn.Module]  # num_classes -> backbone with .fc
    input_size: int
    channels: int = 3
    description: str = ""


ARCHS: Registry[ArchSpec] = Registry("architecture")


def _register(spec: ArchSpec) -> None:
    ARCHS.register(spec.name, spec)


_register(ArchSpec("resnet18", lambda c: tv_resnet.resnet18(num_classes=c), 224,
                   description="torchvision ResNet-18 (8 basic blocks)"))
_register(ArchSpec("resnet50", lambda c: tv_resnet.resnet50(num_classes=c), 224,
                   description="torchvision ResNet-50 (16 bottleneck blocks), the paper's model"))
_register(ArchSpec("wide_resnet50_2", lambda c: tv_resnet.wide_resnet50_2(num_classes=c), 224,
                   description="torchvision WideResNet-50-2 (16 bottleneck blocks)"))
_register(ArchSpec("small_resnet", lambda c: SmallResNet((16, 32, 64), (1, 1, 1), c), 28,
                   description="3-stage ResNet for 28-32 px inputs (3 basic blocks), the embedded zoo's"))


class TransferModel(nn.Module):
    """A backbone behind its normaliser, seen as stem, ordered blocks and head.

    This class implements the view for the torchvision ResNet layout; other backbones
    (timm's, see :mod:`robust_transfer.models.timm_backbone`) subclass it and override
    :meth:`stem`, :meth:`blocks`, :meth:`block_names`, :meth:`neck`, :meth:`pool`,
    :attr:`head` and :meth:`_set_head`. The state dict is always ``normalizer.*`` plus
    ``net.*`` (the backbone's own keys).

    Attributes:
        arch: registered architecture name (``timm:<name>`` for timm backbones).
        normalizer: per-channel mean/std, applied first.
        net: the backbone (torchvision ResNet layout here).
        frozen_depth: number of leading stages (stem counts as one, then each block)
            whose parameters are frozen; they run in eval mode and, when the input needs
            no gradient, without autograd.
    """

    # the SourceRecord a model was loaded from (robust_transfer.models.sources), if any
    source_record: Any = None

    def __init__(self, arch: str, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 input_size: int, channels: int = 3) -> None:
        super().__init__()
        self.arch = arch
        self.normalizer = Normalize(mean, std)
        self.net = net
        self.input_size = input_size
        self.channels = channels
        self.frozen_depth = 0
        self.arch_kwargs: dict = {}  # extra builder arguments (timm), saved with checkpoints

    # --- the blocks view ---------------------------------------------------------------
    def stem(self) -> nn.Module:
        n = self.net
        return nn.Sequential(n.conv1, n.bn1, n.relu, n.maxpool)

    def block_names(self) -> list[str]:
        """Names of the residual blocks in forward order, e.g. ``layer4.2``."""
        names = []
        for lname in _layer_names(self.net):
            names += [f"{lname}.{i}" for i in range(len(getattr(self.net, lname)))]
        return names

    def blocks(self) -> list[nn.Module]:
        return [b for lname in _layer_names(self.net) for b in getattr(self.net, lname)]

    def stages(self) -> list[nn.Module]:
        """Stem, then every block: what ``frozen_depth`` counts."""
        return [self.stem(), *self.blocks()]

    def neck(self) -> list[nn.Module]:
        """Modules with parameters between the last block and the head (final norms).

        They train with the last block and are frozen with it (``unfrozen=0``). A
        ResNet has none: global average pooling has no parameters.
        """
        return []

    @property
    def head(self) -> nn.Linear:
        return self.net.fc

    def _set_head(self, fc: nn.Linear) -> None:
        self.net.fc = fc

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def reset_classifier(self, num_classes: int, init: str = "normal",
                         generator: torch.Generator | None = None) -> None:
        """A new ``Linear(feature_dim, num_classes)`` head.

        Args:
            num_classes: classes of the target.
            init: see :func:`init_head`.
            generator: seeds the head's weights.
        """
        old = self.head
        fc = nn.Linear(self.feature_dim, num_classes).to(old.weight.device, old.weight.dtype)
        init_head(fc, init, generator)
        self._set_head(fc)

    # --- forward -----------------------------------------------------------------------
    def forward_prefix(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        """Normalise and run the first ``depth`` stages."""
        x = self.normalizer(x)
        for stage in self.stages()[:depth]:
            x = stage(x)
        return x

    def forward_from(self, h: torch.Tensor, depth: int) -> torch.Tensor:
        """Run stages ``depth..`` then pool and head on a prefix output ``h``."""
        for stage in self.stages()[depth:]:
            h = stage(h)
        return self.head(self.pool(h))

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """Last block's output -> the head's input ``[B, feature_dim]``."""
        return torch.flatten(self.net.avgpool(h), 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (the head's input)."""
        return self.pool(self.forward_prefix(x, len(self.stages())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = self.frozen_depth
        # the frozen prefix needs no autograd unless someone wants input gradients
        no_grad = depth > 0 and not x.requires_grad
        with torch.no_grad() if no_grad else nullcontext():
            h = self.forward_prefix(x, depth)
        return self.forward_from(h, depth)

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        # frozen stages keep their BatchNorm statistics: always eval
        stages = self.stages()
        for stage in stages[: self.frozen_depth]:
            stage.eval()
        if self.frozen_depth >= len(stages):  # the neck is frozen with the last block
            for module in self.neck():
                module.eval()
        return self


def _layer_names(net: nn.Module) -> list[str]:
    names = getattr(net, "layer_names", None)
    if names is not None:
        return list(names)
    return [f"layer{i}" for i in range(1, 5) if hasattr(net, f"layer{i}")]


def init_head(fc: nn.Linear, init: str = "normal", generator: torch.Generator | None = None) -> None:
    """Initialise a classifier head.

    ``"paper"``: weight N(0, 1), bias 0 (the paper's code). ``"normal"``: weight
    N(0, 0.01^2), bias 0 (logits start near zero, which keeps lr 0.1 stable on wide
    features). ``"torch"``: PyTorch's default uniform init.
    """
    with torch.no_grad():
        if init == "paper":
            fc.weight.normal_(0.0, 1.0, generator=generator)
            fc.bias.zero_()
        elif init == "normal":
            fc.weight.normal_(0.0, 0.01, generator=generator)
            fc.bias.zero_()
        elif init == "torch":
            fc.reset_parameters()
        else:
            from robust_transfer.errors import ConfigError

            raise ConfigError(f"unknown head init '{init}'; valid: normal, paper, torch")


def create_model(arch: str, num_classes: int = 1000, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, input_size: int | None = None,
                 **arch_kwargs) -> TransferModel:
    """Build a registered architecture behind its normaliser.

    Args:
        arch: a name from :data:`ARCHS` (``resnet18``, ``resnet50``, ``wide_resnet50_2``,
            ``small_resnet``), or ``timm:<name>`` for a timm architecture (random
            weights; see :func:`robust_transfer.models.timm_backbone.create_timm_source`).
        num_classes: classes of the head.
        mean, std: the normaliser (default: ImageNet's; for timm, its pretrained config's).
        input_size: the square input size (default: the architecture's).
        **arch_kwargs: timm architectures only: passed to ``timm.create_model``
            (``depth=2``, ...); checkpoints record them.

    Example:
        >>> m = create_model("small_resnet", 10, mean=(0.5,)*3, std=(0.5,)*3)
        >>> m(torch.rand(2, 3, 28, 28)).shape
        torch.Size([2, 10])
    """
    if arch.startswith(TIMM_PREFIX):
        from robust_transfer.models.timm_backbone import create_timm_source

        return create_timm_source(arch[len(TIMM_PREFIX):], num_classes=num_classes,
                                  input_size=input_size, mean=mean, std=std, **arch_kwargs)
    if arch_kwargs:
        from robust_transfer.errors import ConfigError

        raise ConfigError(f"architecture '{arch}' takes no extra arguments "
                          f"({', '.join(arch_kwargs)}); those are for timm:<name> architectures")
    spec = ARCHS.get(arch)
    return TransferModel(arch, spec.build(num_classes), mean or IMAGENET_MEAN, std or IMAGENET_STD,
                         input_size or spec.input_size, spec.channels)
