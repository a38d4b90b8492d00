"""One factory for every source, in timm's ``create_model`` habit.

``create_model("fmnist-l2-eps1", num_classes=10, unfrozen_blocks=1)`` resolves the name
(zoo name, checkpoint path or ``timm:NAME``) through :mod:`.sources`, loads the weights
checked, puts a new head on it and freezes all but the last blocks: a model ready to
fine-tune. ``list_models("*l2*")`` lists the names it accepts.
"""

from __future__ import annotations

import fnmatch
import os
from typing import TYPE_CHECKING

from robust_transfer.models import zoo
from robust_transfer.models.finetune import UnfrozenBlocks
from robust_transfer.models.metadata import timm_arch, timm_name
from robust_transfer.models.sources import SourceRecord

if TYPE_CHECKING:
    import torch

    from robust_transfer.models.base import TransferModel


def create_model(name_or_path: str | os.PathLike | SourceRecord, num_classes: int | None = None,
                 unfrozen_blocks: UnfrozenBlocks | str | None = None, pretrained: bool = True, *,
                 head_init: str = "normal", seed: int = 0,
                 device: str | torch.device = "cpu") -> TransferModel:
    """A source model, optionally with a new head and its early blocks frozen.

    Args:
        name_or_path: a zoo name (:func:`list_models`), a checkpoint path (ours, the
            robustness library's, a torchvision state dict) or ``timm:NAME``.
        num_classes: classes of a new head (weights N(0, 0.01^2) by default, seeded);
            ``None`` keeps the source's head.
        unfrozen_blocks: blocks trained besides the head: ``0`` (head only), ``k`` (the
            last k) or ``ALL``; ``None`` leaves every parameter trainable. Frozen blocks
            keep their BatchNorm statistics.
        pretrained: load the source's weights (checked against their sha256); ``False``
            builds the same architecture, with the source's normaliser, randomly initialised.
        head_init: ``normal``, ``paper`` (N(0, 1), the paper's) or ``torch``.
        seed: seeds the new head.
        device: where the model goes.

    Returns:
        A :class:`~robust_transfer.models.arch.TransferModel` in train mode, its record in
        ``model.source_record``.

    Raises:
        UnknownNameError: not a zoo name (close names suggested) nor an existing path.
        SourceMissingError: a zoo model whose file is not on this machine.
        CheckpointError: weights that are corrupt or do not fit.
        ConfigError: more unfrozen blocks than the model has, a bad ``head_init``.

    Example:
        >>> import robust_transfer as rt
        >>> model = rt.create_model("fmnist-l2-eps1", num_classes=10, unfrozen_blocks=1)
        >>> [p.requires_grad for p in model.head.parameters()]
        [True, True]
    """
    import torch

    from robust_transfer.models.finetune import set_unfrozen_blocks
    from robust_transfer.models.sources import load_source, resolve_source

    record = resolve_source(name_or_path)
    model = load_source(record) if pretrained else _untrained(record)
    if num_classes is not None:
        model.reset_classifier(num_classes, head_init, torch.Generator().manual_seed(int(seed)))
    if unfrozen_blocks is not None:
        set_unfrozen_blocks(model, unfrozen_blocks)
    model.source_record = record
    return model.to(device).train()


def _untrained(record: SourceRecord) -> TransferModel:
    from robust_transfer.models.arch import build_architecture
    from robust_transfer.models.base import IMAGENET_MEAN, IMAGENET_STD
    from robust_transfer.models.sources import timm_source

    if record.kind == "timm":
        return timm_source(record.arch, pretrained=False)
    meta = record.metadata
    model = build_architecture(record.arch, record.num_classes,
                               tuple(meta.get("mean", IMAGENET_MEAN)),
                               tuple(meta.get("std", IMAGENET_STD)), record.input_size)
    model.channels = int(meta.get("channels", model.channels))
    return model


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Zoo names matching a shell-style ``pattern`` (``"*l2*"``, ``"resnet50-*"``).

    Args:
        pattern: matched against every name with :func:`fnmatch.fnmatchcase`; a pattern
            starting ``timm:`` (``"timm:*"``, ``"timm:convnext_*"``) lists timm
            architectures instead (``timm.list_models``), each as ``timm:NAME``.
        kind: only ``embedded``, ``published`` or ``torchvision`` models; ``None``: all.

    Returns:
        Matching names: embedded first, then published, then torchvision ones; or the
        matching timm names (empty when timm is not installed).
    """
    timm_pattern = timm_name(pattern)
    if timm_pattern is not None:
        return _timm_names(timm_pattern) if kind in (None, "timm") else []
    names = zoo.zoo_names()
    if kind is not None:
        names = [n for n in names if zoo.zoo_kind(n) == kind]
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _timm_names(pattern: str) -> list[str]:
    try:
        import timm
    except ImportError:
        return []
    return [timm_arch(name) for name in timm.list_models(pattern or "*")]
