"""The paper's train augmentation as batched tensor operations, on any device.

The paper (its code: torchvision ``RandomCrop(224, padding=4)``, ``RandomHorizontalFlip()``,
``ColorJitter(.25, .25, .25)``, ``RandomRotation(2)``, one image at a time in DataLoader
workers) draws fresh parameters per image. Here the parameters of a whole batch are drawn
at once (:func:`draw_params`, on the CPU from a seeded generator, so a run draws the same
numbers on any device) and applied with a fixed number of tensor operations whatever the
batch size (:func:`apply_augment`), on the device the batch is on. Each step matches
torchvision's functional op given the same parameters:

* crop: zero padding of 4, then a window at offsets ``(dy, dx)``, each uniform on 0..8
  (``v2.functional.crop`` of the padded image);
* flip: horizontal, with probability 1/2 (``horizontal_flip``);
* colour jitter: brightness, contrast and saturation factors each uniform on
  [0.75, 1.25], applied in an order drawn uniformly from the 6 permutations per image, as
  ``ColorJitter`` draws ``randperm`` per call (``adjust_brightness``, ``adjust_contrast``,
  ``adjust_saturation``: blends with black, the grayscale mean, the grayscale image);
* rotation: angle uniform on [-2, 2] degrees about the centre, nearest-neighbour, fill 0
  (``rotate`` with ``RandomRotation``'s defaults), through the same sampling grid as
  torchvision's tensor kernel.

:data:`PIPELINE_VERSION` names this way of drawing: runs augmented before it drew their
numbers per image through torchvision's transforms, so their results differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robust_transfer.errors import ConfigError
from robust_transfer.versions import INPUT_PIPELINE as PIPELINE_VERSION

__all__ = ["PAPER", "PIPELINE_VERSION", "AugmentConfig", "AugmentParams", "apply_augment",
           "augment_batch", "crop", "draw_params", "flip", "jitter", "rotate", "rotation_grid"]

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation's ranges (defaults: the paper's).

    Attributes:
        padding: zero padding of the random crop, pixels (crop offsets uniform on 0..2*padding).
        flip: probability of a horizontal flip.
        jitter: colour jitter strength: brightness, contrast and saturation factors are
            uniform on ``[1 - jitter, 1 + jitter]``.
        degrees: rotation angle uniform on ``[-degrees, degrees]``.
    """

    padding: int = 4
    flip: float = 0.5
    jitter: float = 0.25
    degrees: float = 2.0

    def __post_init__(self) -> None:
        checks = ((0 <= self.padding <= 64, f"padding must be 0..64 pixels, got {self.padding}"),
                  (0.0 <= self.flip <= 1.0, f"flip must be a probability in [0, 1], got {self.flip}"),
                  (0.0 <= self.jitter < 1.0, f"jitter must be in [0, 1), got {self.jitter}"),
                  (0.0 <= self.degrees <= 180.0, f"degrees must be in [0, 180], got {self.degrees}"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


PAPER = AugmentConfig()


@dataclass(frozen=True)
class AugmentParams:
    """Per-image parameters of one batch (CPU or device tensors, leading dimension B).

    Attributes:
        dy, dx: crop offsets into the padded image, int64.
        flip: flip the image, bool.
        factors: ``[B, 3]`` brightness, contrast, saturation factors.
        order: ``[B, 3]`` int64, a permutation of (0 brightness, 1 contrast, 2 saturation).
        angle: rotation, degrees, counter-clockwise as torchvision's ``rotate``.
    """

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    angle: torch.Tensor

    def to(self, device: torch.device | str) -> AugmentParams:
        """The same parameters on ``device`` (one copy of the packed floats)."""
        packed = torch.cat([self.dy[:, None].double(), self.dx[:, None].double(),
                            self.flip[:, None].double(), self.factors.double(),
                            self.order.double(), self.angle[:, None].double()], 1).to(device)
        as_long = packed[:, [0, 1, 6, 7, 8]].long()
        return AugmentParams(as_long[:, 0], as_long[:, 1], packed[:, 2] > 0.5,
                             packed[:, 3:6].float(), as_long[:, 2:5], packed[:, 9])


def draw_params(batch: int, generator: torch.Generator | None = None,
                config: AugmentConfig = PAPER) -> AugmentParams:
    """Draw a batch's parameters at once, on the CPU (the default generator when None).

    Five draws per batch, whatever its size: offsets, flips, factors, orders (the argsort
    of uniform keys, a uniform permutation per row) and angles.
    """
    g = generator
    offsets = torch.randint(0, 2 * config.padding + 1, (batch, 2), generator=g)
    flip = torch.rand(batch, generator=g) < config.flip
    factors = torch.empty(batch, 3).uniform_(1 - config.jitter, 1 + config.jitter, generator=g)
    order = torch.rand(batch, 3, generator=g).argsort(1)
    angle = torch.empty(batch, dtype=torch.float64).uniform_(-config.degrees, config.degrees,
                                                            generator=g)
    return AugmentParams(offsets[:, 0], offsets[:, 1], flip, factors, order, angle)


def apply_augment(x: torch.Tensor, params: AugmentParams, padding: int = PAPER.padding) -> torch.Tensor:
    """Crop, flip, jitter and rotate float ``[B, C, H, W]`` images in [0, 1] (any device)."""
    p = params.to(x.device) if params.dy.device != x.device else params
    x = crop(x, p.dy, p.dx, padding, mirror=p.flip)  # crop, then flip: one gather
    x = jitter(x, p.factors, p.order)
    return rotate(x, p.angle).clamp_(0.0, 1.0)


def crop(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, padding: int,
         mirror: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` and take an ``H x W`` window at ``(dy, dx)`` per image.

    One gather. With ``mirror`` (bool per image), those windows are read right to left:
    the crop followed by :func:`flip`, in the same pass.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    j = torch.arange(w, device=x.device).view(1, 1, w)
    if mirror is not None:
        j = torch.where(mirror.view(b, 1, 1), (w - 1) - j, j)
    rows = dy.view(b, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
    flat = (rows * (w + 2 * padding) + dx.view(b, 1, 1) + j).view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, flat).view(b, c, h, w)


def flip(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Mirror the images where ``which`` is true."""
    return torch.where(which.view(-1, 1, 1, 1), x.flip(-1), x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (r * _GRAY[0]).add_(g, alpha=_GRAY[1]).add_(b, alpha=_GRAY[2]).unsqueeze(1)


def jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation in each image's own order (three blend steps).

    Each adjustment is ``clamp(f * x + (1 - f) * target)``: target 0 (brightness), the
    mean of the grayscale image (contrast) or the grayscale image (saturation), as
    torchvision's ``_blend``. At step k every image applies its op ``order[:, k]``,
    written as ``clamp(f * x + c * gray + d)`` with per-image ``c`` and ``d`` (zero where
    the op does not use them), so a step costs the same whichever op each image applies.
    """
    b = x.shape[0]
    for step in range(3):
        op = order[:, step].view(b, 1, 1, 1)
        f = factors.gather(1, order[:, step].view(b, 1)).view(b, 1, 1, 1)
        gray = _gray(x)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        c = (1 - f) * (op == 2)
        d = (1 - f) * (op == 1) * mean
        x = torch.addcmul(torch.addcmul(d, gray, c), x, f).clamp_(0.0, 1.0)
    return x


def rotation_grid(angle: torch.Tensor, h: int, w: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, H, W, 2]`` sampling grids of rotations by ``angle`` degrees about the centre.

    The grid torchvision's ``rotate`` builds (its inverse affine matrix, pixel-centre base
    grid, normalised by half the image size), one per image in one batched product.
    """
    rot = torch.deg2rad(-angle.double())  # rotate() passes -angle to the inverse matrix
    cos, sin = torch.cos(rot), torch.sin(rot)
    # inverse matrix [[d, -b], [-c, a]] with a = d = cos(rot), b = -sin(rot), c = sin(rot)
    theta = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # [B, 2, 2]
    theta = theta.to(dtype)
    half = torch.tensor([0.5 * w, 0.5 * h], dtype=dtype, device=angle.device)
    rescaled = theta.transpose(1, 2) / half  # [B, 2 (in), 2 (out)], columns divided by (w/2, h/2)
    xs = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, w, dtype=dtype, device=angle.device)
    ys = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, h, dtype=dtype, device=angle.device)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).view(1, h * w, 2)
    return torch.matmul(base, rescaled).view(-1, h, w, 2)


def rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its ``angle`` (degrees), nearest-neighbour, zeros outside."""
    grid = rotation_grid(angle.to(x.device), x.shape[-2], x.shape[-1], x.dtype)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None,
                  config: AugmentConfig = PAPER) -> torch.Tensor:
    """Draw a batch's parameters (:func:`draw_params`) and apply them (:func:`apply_augment`)."""
    return apply_augment(x, draw_params(x.shape[0], generator, config), config.padding)

