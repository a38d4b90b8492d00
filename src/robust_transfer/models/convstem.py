"""The ConvStem architectures of Singh, Croce and Hein 2023 as timm model names.

"Revisiting Adversarial Training for ImageNet" (arXiv 2303.01870) replaced the patch
embedding of ViTs and the stem of ConvNeXts by a small stack of stride-2 convolutions.
Its robust ImageNet models (RobustBench ImageNet Linf) are registered here with timm's
registry, so ``timm:singh2023_convnext_base_convstem`` is an ordinary timm name that
:func:`~robust_transfer.models.timm_backbone.create_timm_source` and our checkpoints
rebuild without pickled code.

Layer layout (channels, strides, norms) and the state-dict key names follow
RobustBench's ``robustbench/model_zoo/architectures/convstem_models.py``
(``ConvBlock``, ``ConvBlock1``, ``ConvBlock3``, ``get_convstem_models``): a module whose
attribute ``stem`` is an ``nn.Sequential`` of Conv2d / channels-first LayerNorm (eps
1e-6) / GELU, so keys read ``stem.stem.0.weight``, ``stem.stem.1.weight``, ... (ConvNeXt)
and ``patch_embed.proj.stem.0.weight``, ... (ViT). timm's ``LayerNorm2d`` computes the
same channels-first layer norm with parameters ``weight`` and ``bias``.

Normalisation (RobustBench ``utils.load_model``): the ConvNeXt-T/S/B/L and ViT-B
ConvStem models are in its list of models that get no normalisation layer, i.e. they read
pixels in [0, 1] directly: mean 0, std 1 here. ViT-S ConvStem is wrapped in
``normalize_model`` with the ImageNet mean/std.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

ZERO_MEAN, UNIT_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_registered = False


class ConvStem(nn.Module):
    """Conv (3x3, given stride) -> LayerNorm2d -> GELU per width, optional final 1x1 conv.

    Args:
        widths: output channels of the 3x3 convolutions.
        strides: their strides.
        out: channels of a final 1x1 convolution without norm (``None``: none).
    """

    def __init__(self, widths: tuple[int, ...], strides: tuple[int, ...], out: int | None = None) -> None:
        super().__init__()
        from timm.layers import LayerNorm2d

        layers: list[nn.Module] = []
        in_ch = 3
        for w, s in zip(widths, strides, strict=True):
            layers += [nn.Conv2d(in_ch, w, 3, s, 1), LayerNorm2d(w, eps=1e-6), nn.GELU()]
            in_ch = w
        if out is not None:
            layers.append(nn.Conv2d(in_ch, out, 1, 1, 0))
        self.stem = nn.Sequential(*layers)

    def forward(self, x):
        return self.stem(x)


def _vit_stem(width: int, out: int) -> ConvStem:
    # ConvBlock(siz=48): four stride-2 convs 48, 96, 192, 384 then a 1x1 conv to `out`
    return ConvStem((width, 2 * width, 4 * width, 8 * width), (2, 2, 2, 2), out)


def _convnext_stem_small(width: int) -> ConvStem:
    # ConvBlock1(siz=48): two stride-2 convs, 48 then 96 channels
    return ConvStem((width, 2 * width), (2, 2))


def _convnext_stem_large(width: int) -> ConvStem:
    # ConvBlock3(siz): strides 2, 2, 1 with widths siz, 1.5 siz, 2 siz
    return ConvStem((width, int(width * 1.5), 2 * width), (2, 2, 1))


def _with_cfg(model: Any, mean: tuple, std: tuple) -> nn.Module:
    # RobustBench evaluates these with "BicubicRes256Crop224": bicubic, crop 224/256
    model.pretrained_cfg = {**dict(model.pretrained_cfg or {}), "mean": mean, "std": std,
                            "interpolation": "bicubic", "crop_pct": 0.875,
                            "input_size": (3, 224, 224), "num_classes": 1000}
    return model


def _no_pretrained(pretrained: bool, name: str) -> None:
    if pretrained:
        from robust_transfer.errors import ConfigError

        raise ConfigError(f"{name} has no timm weights; load its robust weights from the zoo "
                          "(robust-transfer zoo list)")


def register_convstem_models() -> None:
    """Register the six ConvStem architectures with timm (once; imports timm)."""
    global _registered
    if _registered:
        return
    import timm
    from timm.models import register_model

    def convnext(base: str, stem, mean, std):
        def build(pretrained: bool = False, **kwargs):
            _no_pretrained(pretrained, base)
            model: Any = timm.create_model(base, pretrained=False, **kwargs)
            model.stem = stem()
            return _with_cfg(model, mean, std)
        return build

    def vit(base: str, stem, mean, std):
        def build(pretrained: bool = False, **kwargs):
            _no_pretrained(pretrained, base)
            model: Any = timm.create_model(base, pretrained=False, **kwargs)
            model.patch_embed.proj = stem()
            return _with_cfg(model, mean, std)
        return build

    specs = {
        # name: builder (base timm architecture as in get_convstem_models)
        "singh2023_convnext_tiny_convstem": convnext(
            "convnext_tiny", lambda: _convnext_stem_small(48), ZERO_MEAN, UNIT_STD),
        "singh2023_convnext_small_convstem": convnext(
            "convnext_small", lambda: _convnext_stem_small(48), ZERO_MEAN, UNIT_STD),
        "singh2023_convnext_base_convstem": convnext(
            "convnext_base", lambda: _convnext_stem_large(64), ZERO_MEAN, UNIT_STD),
        "singh2023_convnext_large_convstem": convnext(
            "convnext_large", lambda: _convnext_stem_large(96), ZERO_MEAN, UNIT_STD),
        # ViT-S: deit_small_patch16_224 with ConvBlock(48, end_siz=8): final 1x1 to 384
        "singh2023_vit_small_convstem": vit(
            "deit_small_patch16_224", lambda: _vit_stem(48, 384), IMAGENET_MEAN, IMAGENET_STD),
        # ViT-B: vit_base_patch16_224 with ConvBlock(48, end_siz=16): final 1x1 to 768
        "singh2023_vit_base_convstem": vit(
            "vit_base_patch16_224", lambda: _vit_stem(48, 768), ZERO_MEAN, UNIT_STD),
    }
    for name, fn in specs.items():
        fn.__name__ = name
        fn.__module__ = __name__
        register_model(fn)
    _registered = True
