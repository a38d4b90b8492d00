"""timm architectures as source models, behind the same blocks view as the ResNets.

:func:`create_timm_source` wraps a timm model in a :class:`TimmTransferModel`:
``normalizer -> stem -> blocks -> neck/pool -> head``, the normaliser taken from timm's
``pretrained_cfg`` (mean/std). What one "block" is depends on the family, so that
``unfrozen_blocks=k`` means "the last k units the architecture is built of":

* ``VisionTransformer`` (``vit_*``, ``deit_*`` without distillation token): one
  transformer block. Stem: patch embedding, class/register tokens, position embedding.
  Neck: the final ``norm`` and ``fc_norm``.
* ``SwinTransformer`` (``swin_*``): one transformer block; the patch merging that opens
  a stage runs with that stage's first block. Stem: patch embedding. Neck: ``norm``.
* ``ConvNeXt`` (``convnext_*``): one stage (downsampling + its blocks), as timm groups
  ConvNeXt for layer decay; ConvNeXt-B has 4. Neck: ``norm_pre`` and the head's norm.
* ``ResNet`` (timm's ``resnet*``, ``resnext*``, ``wide_resnet*``, ``seresnet*``, ...):
  one residual block, as for torchvision ResNets. Neck: none.

The neck (final norms) trains together with the last block and is frozen with it when
only the head trains. The head is timm's classifier ``Linear``; :meth:`pool` gives the
pooled, normed features it reads, on which influence is computed.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from robust_transfer.errors import CheckpointError, ConfigError, UnknownNameError
from robust_transfer.models.base import IMAGENET_MEAN, IMAGENET_STD, TransferModel
from robust_transfer.models.metadata import timm_arch, timm_name

Modules = list[nn.Module]
TimmModel = Any
"""A model built by timm: its submodules (``blocks``, ``norm``, ``head``) depend on its class,
so a :class:`Family` reads them untyped (torch types each as ``Tensor | Module``)."""


class _ViTStem(nn.Module):
    """Patch embedding, prefix tokens and position embedding of a timm ViT.

    Holds the ViT's own submodules and parameters (shared, not copied), so
    ``parameters()`` and ``eval()`` reach exactly the stem; the ViT itself is reached
    only through a bound method, which registers nothing.
    """

    def __init__(self, vit: TimmModel) -> None:
        super().__init__()
        self.patch_embed, self.patch_drop, self.norm_pre = vit.patch_embed, vit.patch_drop, vit.norm_pre
        for name in ("cls_token", "reg_token", "pos_embed"):
            param = getattr(vit, name, None)
            if isinstance(param, nn.Parameter):
                self.register_parameter(name, param)
        self._embed_positions = vit._pos_embed  # adds tokens and position embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_pre(self.patch_drop(self._embed_positions(self.patch_embed(x))))


def _head_parts(head: nn.Module, classifier: nn.Module) -> Modules:
    """A timm classifier head's modules other than its final Linear (pooling, norm)."""
    return [m for m in head.children() if m is not classifier]


@dataclass(frozen=True)
class Family:
    """How one timm model class is seen as stem, blocks, neck and classifier.

    Attributes:
        name: the timm class name (``type(model).__name__``).
        block: what one block is, for messages and docs.
        examples: model name patterns of the family.
        stem: model -> the module that runs before the first block.
        blocks: model -> the blocks in forward order, with their names.
        post: model -> the final norm applied before ``forward_head`` (or None).
        neck: model -> modules with parameters after the blocks, except the classifier.
    """

    name: str
    block: str
    examples: str
    stem: Callable[[TimmModel], nn.Module]
    blocks: Callable[[TimmModel], list[tuple[str, nn.Module]]]
    post: Callable[[TimmModel], nn.Module | None]
    neck: Callable[[TimmModel], Modules]


def _vit_blocks(m: TimmModel) -> list[tuple[str, nn.Module]]:
    return [(f"blocks.{i}", b) for i, b in enumerate(m.blocks)]


def _swin_blocks(m: TimmModel) -> list[tuple[str, nn.Module]]:
    out = []
    for s, stage in enumerate(m.layers):
        for i, block in enumerate(stage.blocks):
            # the stage's patch merging (Identity in stage 0) runs with its first block
            unit = nn.Sequential(stage.downsample, block) if i == 0 else block
            out.append((f"layers.{s}.blocks.{i}", unit))
    return out


def _resnet_blocks(m: TimmModel) -> list[tuple[str, nn.Module]]:
    return [(f"layer{i}.{j}", b) for i in range(1, 5) for j, b in enumerate(getattr(m, f"layer{i}"))]


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("VisionTransformer", "transformer block", "vit_*, deit_* (no distillation token)",
           _ViTStem, _vit_blocks, lambda m: m.norm,
           lambda m: [m.norm, m.fc_norm, m.head_drop, *([m.attn_pool] if m.attn_pool is not None else [])]),
    Family("SwinTransformer", "transformer block (patch merging with a stage's first)", "swin_*",
           lambda m: m.patch_embed, _swin_blocks, lambda m: m.norm,
           lambda m: [m.norm, *_head_parts(m.head, m.get_classifier())]),
    Family("ConvNeXt", "stage", "convnext_*",
           lambda m: m.stem, lambda m: [(f"stages.{i}", s) for i, s in enumerate(m.stages)],
           lambda m: m.norm_pre, lambda m: [m.norm_pre, *_head_parts(m.head, m.get_classifier())]),
    Family("ResNet", "residual block", "resnet*, resnext*, wide_resnet*, seresnet*",
           lambda m: nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool), _resnet_blocks,
           lambda m: None, lambda m: [m.global_pool]),
)}


def supported_families() -> str:
    """One line naming the supported timm families and what a block is in each."""
    return "; ".join(f"{f.name} ({f.examples}: a block is a {f.block})" for f in FAMILIES.values())


class TimmTransferModel(TransferModel):
    """A timm model behind its normaliser, with the blocks view of its :class:`Family`."""

    def __init__(self, name: str, net: nn.Module, family: Family, mean: tuple[float, ...],
                 std: tuple[float, ...], input_size: int, channels: int = 3) -> None:
        super().__init__(timm_arch(name), net, mean, std, input_size, channels)
        self.family_name = family.name  # a name, not the Family, so the model pickles

    @property
    def family(self) -> Family:
        return FAMILIES[self.family_name]

    @property
    def timm_model(self) -> TimmModel:
        """The timm model itself (``net``), read through its family's attributes."""
        return self.net

    def stem(self) -> nn.Module:
        return self.family.stem(self.net)

    def block_names(self) -> list[str]:
        return [name for name, _ in self.family.blocks(self.net)]

    def blocks(self) -> list[nn.Module]:
        return [block for _, block in self.family.blocks(self.net)]

    def neck(self) -> list[nn.Module]:
        return self.family.neck(self.net)

    @property
    def head(self) -> nn.Linear:
        return self.timm_model.get_classifier()

    def _set_head(self, fc: nn.Linear) -> None:
        self.timm_model.reset_classifier(fc.out_features)  # puts a Linear where timm's head is
        with torch.no_grad():
            self.head.weight.copy_(fc.weight)
            self.head.bias.copy_(fc.bias)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        post = self.family.post(self.net)
        if post is not None:
            h = post(h)
        return self.timm_model.forward_head(h, pre_logits=True)


def create_timm_source(name: str, pretrained: bool = False, num_classes: int | None = None, *,
                       input_size: int | None = None, mean: tuple[float, ...] | None = None,
                       std: tuple[float, ...] | None = None, **kwargs: Any) -> TransferModel:
    """A timm architecture as a source model with the blocks view.

    Args:
        name: a timm model name (``timm.list_models()``), e.g. ``convnext_atto`` or
            ``vit_tiny_patch16_224``; a ``timm:`` prefix is accepted.
        pretrained: load timm's pretrained weights (downloads from the Hugging Face hub
            unless cached).
        num_classes: classes of the head (default: timm's, 1000 for ImageNet models).
        input_size: square input size; passed as ``img_size`` to ViT and Swin models;
            default: the model's (timm's ``pretrained_cfg``).
        mean, std: the normaliser; default: timm's ``pretrained_cfg`` mean/std.
        **kwargs: passed to ``timm.create_model`` (``depth``, ``embed_dim``, ...).

    Returns:
        A :class:`TimmTransferModel` in train mode, nothing frozen.

    Raises:
        UnknownNameError: ``name`` is not a timm model (the message suggests close names).
        ConfigError: the model's family has no blocks view (the message lists the
            supported families), or timm rejects the arguments.
        CheckpointError: pretrained weights cannot be fetched.

    Example:
        >>> m = create_timm_source("convnext_atto", num_classes=10, input_size=32)
        >>> len(m.blocks()), m(torch.rand(2, 3, 32, 32)).shape
        (4, torch.Size([2, 10]))
    """
    import timm

    from robust_transfer.models.convstem import register_convstem_models

    register_convstem_models()
    name = timm_name(name) or name
    _check_name(timm, name)
    net = _build(timm, name, pretrained, num_classes, input_size, kwargs)
    family = family_of(net, name)
    cfg = getattr(net, "pretrained_cfg", None) or {}
    size = input_size or _native_size(net, cfg)
    model = TimmTransferModel(name, net, family, tuple(mean or cfg.get("mean", IMAGENET_MEAN)),
                              tuple(std or cfg.get("std", IMAGENET_STD)), size,
                              int(cfg.get("input_size", (3,))[0]))
    model.arch_kwargs = dict(kwargs)  # so that checkpoints rebuild the same architecture
    return model


def _check_name(timm: Any, name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
    raise UnknownNameError(f"unknown timm model '{name}'; {hint}")


def _build(timm: Any, name: str, pretrained: bool, num_classes: int | None,
           input_size: int | None, kwargs: dict[str, Any]) -> nn.Module:
    args = dict(kwargs)
    if num_classes is not None:
        args["num_classes"] = num_classes
    if input_size is not None and "img_size" not in args and _takes_img_size(name):
        args["img_size"] = input_size
    try:
        if not pretrained:
            return timm.create_model(name, pretrained=False, **args)
        from huggingface_hub import constants

        from robust_transfer.hub import quiet_hub

        with quiet_hub(Path(constants.HF_HUB_CACHE)):
            return timm.create_model(name, pretrained=True, **args)
    except Exception as err:  # timm and the hub client raise many types
        if pretrained and not isinstance(err, (TypeError, AssertionError)):
            raise CheckpointError(f"cannot fetch pretrained weights of timm model '{name}': "
                                  f"{_first_line(err)}; connect to the Hugging Face hub once to "
                                  "fill its cache, or copy a filled cache into $HF_HOME "
                                  "(default ~/.cache/huggingface) on this machine") from None
        if isinstance(err, (TypeError, ValueError, AssertionError)):
            raise ConfigError(f"timm cannot build '{name}' with {args or 'no arguments'}: "
                              f"{_first_line(err)}") from None
        raise


def _takes_img_size(name: str) -> bool:
    return name.startswith(("vit_", "deit_", "swin_", "singh2023_vit"))


def family_of(net: TimmModel, name: str = "") -> Family:
    """The :class:`Family` of a built timm model, checked to cover every parameter.

    Raises:
        ConfigError: the class has no blocks view, or this variant has parameters the
            view would not place (e.g. a distillation token).
    """
    cls = type(net).__name__
    family = FAMILIES.get(cls)
    label = f"timm model '{name}' ({cls})" if name else f"timm model {cls}"
    if family is None:
        raise ConfigError(f"{label} has no blocks view; supported: {supported_families()}")
    try:
        parts = [[family.stem(net)], [b for _, b in family.blocks(net)], family.neck(net),
                 [net.get_classifier()]]
    except AttributeError as err:
        raise ConfigError(f"{label} is a variant the blocks view does not know ({err}); "
                          f"supported: {supported_families()}") from None
    _check_coverage(net, parts, label)
    return family


def _check_coverage(net: nn.Module, parts: list[Modules], label: str) -> None:
    """Every parameter in exactly one of stem, blocks, neck, head: nothing left out of
    freezing, nothing trained twice."""
    seen: dict[int, int] = {}
    for part in parts:
        for module in part:
            for p in module.parameters():
                seen[id(p)] = seen.get(id(p), 0) + 1
    named = dict(net.named_parameters())
    left = [n for n, p in named.items() if id(p) not in seen]
    twice = [n for n, p in named.items() if seen.get(id(p), 0) > 1]
    if left or twice:
        what = f"parameters outside the view: {', '.join(left[:3])}" if left else \
            f"parameters in two parts: {', '.join(twice[:3])}"
        raise ConfigError(f"{label} is a variant the blocks view does not cover ({what}); "
                          f"supported: {supported_families()}")


def _native_size(net: nn.Module, cfg: dict[str, Any]) -> int:
    img_size = getattr(getattr(net, "patch_embed", None), "img_size", None)
    if img_size:
        return int(img_size[-1] if isinstance(img_size, (tuple, list)) else img_size)
    return int(cfg.get("input_size", (3, 224, 224))[-1])


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}"
