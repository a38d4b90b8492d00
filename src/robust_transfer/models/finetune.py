"""Freeze all but the last k blocks, re-initialise the head, keep frozen BatchNorm fixed.

Also the one type of each fine-tuning setting and its one parser, used wherever a value
comes in (the CLI's arguments, a study spec's YAML, a stored run config):

* unfrozen blocks: a non-negative ``int`` or :data:`ALL` (:data:`UnfrozenBlocks`);
* training images ``n``: a positive ``int`` or ``None`` for the whole split.

This module imports torch only when a model is prepared, so parsers built from it stay light.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Literal, Union

from robust_transfer.errors import ConfigError

if TYPE_CHECKING:
    from robust_transfer.models.base import TransferModel


class AllBlocks(str, enum.Enum):
    """Type of :data:`ALL`; a ``str`` equal to ``"all"`` so stored configs read the same."""

    ALL = "all"

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return "ALL"


ALL = AllBlocks.ALL
"""Every block unfrozen (the stem too): ``unfrozen_blocks=ALL``."""

UnfrozenBlocks = Union[int, Literal[AllBlocks.ALL]]  # noqa: UP007 (a runtime alias)
_UNFROZEN_HINT = "a non-negative integer or 'all'"


def parse_unfrozen(value: Any) -> UnfrozenBlocks:
    """The one parser of unfrozen blocks: ``ALL``/``"all"`` or a non-negative int.

    Args:
        value: from a CLI argument (``"3"``, ``"all"``), a YAML value (``3``, ``all``), a
            stored config, or already parsed.

    Returns:
        An ``int`` >= 0, or :data:`ALL`.

    Raises:
        ConfigError: anything else (booleans, negative numbers, other strings).
    """
    if isinstance(value, str):
        if value == ALL:
            return ALL
        text = value.strip()
        if not text.isdigit():
            raise ConfigError(f"unfrozen blocks must be {_UNFROZEN_HINT}, got '{value}'")
        return int(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"unfrozen blocks must be {_UNFROZEN_HINT}, got {value!r}")
    return int(value)


def parse_n(value: Any) -> int | None:
    """The one parser of a number of training images: a positive int, or ``None`` for all.

    Args:
        value: ``"all"``, ``None``, ``200`` or ``"200"``.

    Raises:
        ConfigError: anything else (booleans, zero, negative numbers, other strings).
    """
    if value is None or value == "all":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"must be a positive integer or 'all', got {value!r}")
    return int(value)


def n_label(value: int | None) -> str:
    """``"200"`` or ``"all"``: how configs, stores and tables write a number of images."""
    return "all" if value is None else str(value)


def set_unfrozen_blocks(model: TransferModel, unfrozen: UnfrozenBlocks | str) -> None:
    """Train the head and the last ``unfrozen`` blocks; freeze everything before them.

    ``unfrozen=0`` trains the head only, :data:`ALL` trains everything (the stem too).
    Frozen parameters get ``requires_grad=False`` and their stages run in eval mode, so
    their BatchNorm running statistics stay bit-identical (the paper's code let them
    drift).

    Raises:
        ConfigError: ``unfrozen`` exceeds the number of blocks the model has.
    """
    unfrozen = parse_unfrozen(unfrozen)
    n_blocks = len(model.blocks())
    if unfrozen is ALL:
        depth = 0
    else:
        if unfrozen > n_blocks:
            raise ConfigError(
                f"{model.arch} has {n_blocks} blocks; cannot unfreeze {unfrozen} "
                f"(use 0..{n_blocks} or 'all')"
            )
        depth = 1 + n_blocks - unfrozen  # stem + frozen blocks
    for p in model.parameters():
        p.requires_grad_(False)
    stages = model.stages()
    trainable = [*stages[depth:], *(model.neck() if depth < len(stages) else [])]
    for module in trainable:  # the neck (final norms) trains with the last block
        for p in module.parameters():
            p.requires_grad_(True)
    for p in model.head.parameters():
        p.requires_grad_(True)
    model.frozen_depth = depth
    model.train(model.training)


def prepare_finetune(model: TransferModel, num_classes: int, unfrozen: UnfrozenBlocks | str,
                     head_init: str = "normal", seed: int = 0) -> TransferModel:
    """New head for ``num_classes`` and the last ``unfrozen`` blocks trainable (in place).

    Args:
        model: the source model (modified).
        num_classes: classes of the target.
        unfrozen: blocks trained besides the head (0 = head only, or :data:`ALL`).
        head_init: see :func:`robust_transfer.models.arch.init_head`.
        seed: seeds the head's weights.

    Returns:
        ``model``.
    """
    import torch  # here, not at the top: the parsers above must not need torch

    gen = torch.Generator().manual_seed(int(seed))
    model.reset_classifier(num_classes, head_init, gen)
    set_unfrozen_blocks(model, unfrozen)
    return model
