"""The registered architectures: torchvision ResNets and a small ResNet, behind :mod:`.base`'s
interface, and :func:`build_architecture`, which builds one by name with random weights.

Every model is a :class:`~robust_transfer.models.base.TransferModel`; this module gives
the view of the torchvision ResNet layout (:class:`ResNetTransferModel`) and hands
``timm:<name>`` architectures to :mod:`.timm_backbone`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn
from torchvision.models import resnet as tv_resnet

from robust_transfer.errors import ConfigError
from robust_transfer.models.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    TransferModel,
    init_head,
)
from robust_transfer.models.metadata import timm_name
from robust_transfer.registry import Registry

__all__ = ["ARCHS", "IMAGENET_MEAN", "IMAGENET_STD", "ArchSpec", "Normalize", "ResNetTransferModel",
           "SmallResNet", "TransferModel", "build_architecture", "init_head"]


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


class ResNetTransferModel(TransferModel):
    """The blocks view of the torchvision ResNet layout (``conv1, bn1, relu, maxpool,
    layerN, avgpool, fc``): one block is one residual block; :class:`SmallResNet` too."""

    def _layer(self, name: str) -> nn.Sequential:
        return cast(nn.Sequential, getattr(self.net, name))

    def stem(self) -> nn.Module:
        n = self.net
        return nn.Sequential(*(cast(nn.Module, getattr(n, k)) for k in ("conv1", "bn1", "relu", "maxpool")))

    def block_names(self) -> list[str]:
        """Names of the residual blocks in forward order, e.g. ``layer4.2``."""
        return [f"{lname}.{i}" for lname in _layer_names(self.net) for i in range(len(self._layer(lname)))]

    def blocks(self) -> list[nn.Module]:
        return [b for lname in _layer_names(self.net) for b in self._layer(lname)]

    @property
    def head(self) -> nn.Linear:
        return cast(nn.Linear, self.net.fc)

    def _set_head(self, fc: nn.Linear) -> None:
        self.net.fc = fc

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """Last block's output -> the head's input ``[B, feature_dim]``."""
        return torch.flatten(cast(nn.Module, self.net.avgpool)(h), 1)


def _layer_names(net: nn.Module) -> list[str]:
    names = getattr(net, "layer_names", None)
    if names is not None:
        return list(names)
    return [f"layer{i}" for i in range(1, 5) if hasattr(net, f"layer{i}")]


def build_architecture(arch: str, num_classes: int = 1000, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, input_size: int | None = None,
                 **arch_kwargs) -> TransferModel:
    """A registered architecture behind its normaliser, randomly initialised.

    (:func:`robust_transfer.create_model` is the other factory: it resolves a *source*
    by zoo name or path and loads its weights.)

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
        >>> m = build_architecture("small_resnet", 10, mean=(0.5,)*3, std=(0.5,)*3)
        >>> m(torch.rand(2, 3, 28, 28)).shape
        torch.Size([2, 10])
    """
    timm = timm_name(arch)
    if timm is not None:
        from robust_transfer.models.timm_backbone import create_timm_source

        return create_timm_source(timm, num_classes=num_classes, input_size=input_size,
                                  mean=mean, std=std, **arch_kwargs)
    if arch_kwargs:
        raise ConfigError(f"architecture '{arch}' takes no extra arguments "
                          f"({', '.join(arch_kwargs)}); those are for timm:<name> architectures")
    spec = ARCHS.get(arch)
    return ResNetTransferModel(arch, spec.build(num_classes), mean or IMAGENET_MEAN, std or IMAGENET_STD,
                         input_size or spec.input_size, spec.channels)
