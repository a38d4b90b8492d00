"""Map a dataset's images to a source model's input, with the paper's optional augmentation.

Everything works on batches of uint8 ``[B, C, H, W]`` tensors and returns float tensors in
``[0, 1]``: normalisation lives inside the model, never here. Batches are processed on the
device they are on (the CPU, or a GPU holding a run's images): resizing is one
``interpolate`` call and the augmentation a fixed number of batched operations
(:mod:`robust_transfer.data.augment`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robust_transfer.data.augment import PIPELINE_VERSION, augment_batch
from robust_transfer.data.datasets import DatasetInfo

__all__ = ["PIPELINE_VERSION", "InputPolicy", "augment_batch", "default_policy"]


@dataclass(frozen=True)
class InputPolicy:
    """How images of one dataset become inputs of one model.

    Attributes:
        channels: the model's input channels (grayscale is repeated to 3).
        size: the model's square input size (images are resized, bilinear, antialiased).
        augment: apply the paper's train augmentation (random crop with padding 4,
            horizontal flip, colour jitter 0.25, rotation 2 degrees).
    """

    channels: int
    size: int
    augment: bool = False

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` -> float ``[B, channels, size, size]`` in [0, 1]."""
        x = images.float().div_(255.0)
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and self.channels == 1:
            x = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            antialias = x.shape[-1] > self.size
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=antialias).clamp_(0.0, 1.0)
        return x.contiguous()

    def train_batch(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Prepare a training batch, augmenting each image independently if asked.

        The augmentation's parameters come from ``generator`` (default: torch's global CPU
        generator, which the training loop seeds), whatever the batch's device.
        """
        x = self.prepare(images)
        if not self.augment:
            return x
        return augment_batch(x, generator)


def default_policy(info: DatasetInfo, channels: int, size: int, augment: bool | str = "auto") -> InputPolicy:
    """The paper's policy: augment colour datasets, never MNIST-like ones (``augment='auto'``)."""
    if augment == "auto":
        augment = not info.grayscale_like
    return InputPolicy(channels=channels, size=size, augment=bool(augment))

