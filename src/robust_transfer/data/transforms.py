"""Map a dataset's images to a source model's input, with the paper's optional augmentation.

Everything works on batches of uint8 ``[B, C, H, W]`` tensors and returns float tensors in
``[0, 1]``: normalisation lives inside the model, never here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from robust_transfer.data.datasets import DatasetInfo


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
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            antialias = x.shape[-1] > self.size
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=antialias).clamp_(0.0, 1.0)
        return x.contiguous()

    def train_batch(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Prepare a training batch, augmenting each image independently if asked."""
        x = self.prepare(images)
        if not self.augment:
            return x
        return augment_batch(x, generator)


def default_policy(info: DatasetInfo, channels: int, size: int, augment: bool | str = "auto") -> InputPolicy:
    """The paper's policy: augment colour datasets, never MNIST-like ones (``augment='auto'``)."""
    if augment == "auto":
        augment = not info.grayscale_like
    return InputPolicy(channels=channels, size=size, augment=bool(augment))


_AUGMENT = v2.Compose([
    v2.RandomHorizontalFlip(),
    v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25),
    v2.RandomRotation(2),
])


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop (padding 4), flip, colour jitter 0.25 and rotation 2 degrees.

    The crop is done batched (pad once, gather a random window per image); the rest draws
    its parameters per image through torchvision's v2 transforms, seeded from the global
    generator, which the training loop seeds.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (b,), generator=generator)
    dx = torch.randint(0, 9, (b,), generator=generator)
    rows = (dy.view(b, 1) + torch.arange(h).view(1, h))  # [b, h]
    cols = (dx.view(b, 1) + torch.arange(w).view(1, w))  # [b, w]
    idx_b = torch.arange(b).view(b, 1, 1)
    cropped = padded.permute(0, 2, 3, 1)[idx_b, rows.view(b, h, 1), cols.view(b, 1, w)]
    cropped = cropped.permute(0, 3, 1, 2)
    out = torch.stack([_AUGMENT(img) for img in cropped])
    return out.clamp_(0.0, 1.0).contiguous()
