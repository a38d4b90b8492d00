"""The interface every source model has: normaliser inside, a blocks view, a resettable head.

Every model is a :class:`TransferModel`: ``normalizer -> stem -> blocks -> pool -> head``.
Inputs are pixels in [0, 1]; the ImageNet (or source dataset) mean/std live in the
model, so attacks, saliency and users never normalise by hand. The layouts live in
:mod:`.arch` (torchvision ResNets) and :mod:`.timm_backbone` (timm's families).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn

from robust_transfer.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


class TransferModel(nn.Module):
    """A backbone behind its normaliser, seen as stem, ordered blocks and head.

    This class is the interface every backbone shares (normalising, freezing a prefix,
    running from a prefix output, resetting the head); a subclass says how its backbone
    is laid out by implementing :meth:`stem`, :meth:`block_names`, :meth:`blocks`,
    :meth:`pool`, :attr:`head` and :meth:`_set_head` (and :meth:`neck` where it has final
    norms): :class:`~robust_transfer.models.arch.ResNetTransferModel` for the torchvision
    ResNet layout, :class:`~robust_transfer.models.timm_backbone.TimmTransferModel` for
    timm's families. The state dict is always ``normalizer.*`` plus ``net.*`` (the
    backbone's own keys).

    Attributes:
        arch: registered architecture name (``timm:<name>`` for timm backbones).
        normalizer: per-channel mean/std, applied first.
        net: the backbone.
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
        """What runs before the first block."""
        raise NotImplementedError

    def block_names(self) -> list[str]:
        """Names of the blocks in forward order, e.g. ``layer4.2``."""
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        """The blocks in forward order."""
        raise NotImplementedError

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
        """The classifier."""
        raise NotImplementedError

    def _set_head(self, fc: nn.Linear) -> None:
        """Put ``fc`` where the backbone's classifier is."""
        raise NotImplementedError

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
        raise NotImplementedError

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
            raise ConfigError(f"unknown head init '{init}'; valid: normal, paper, torch")
