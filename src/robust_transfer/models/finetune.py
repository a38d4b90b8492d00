"""Freeze all but the last k blocks, re-initialise the head, keep frozen BatchNorm fixed."""

from __future__ import annotations

import torch

from robust_transfer.errors import ConfigError
from robust_transfer.models.arch import TransferModel

ALL = "all"


def parse_unfrozen(value: int | str) -> int | str:
    """``"all"`` or a non-negative int (from a CLI or YAML value)."""
    if isinstance(value, str):
        if value == ALL:
            return ALL
        try:
            value = int(value)
        except ValueError:
            raise ConfigError(f"unfrozen blocks must be a non-negative integer or 'all', got '{value}'") from None
    if value < 0:
        raise ConfigError(f"unfrozen blocks must be a non-negative integer or 'all', got {value}")
    return value


def set_unfrozen_blocks(model: TransferModel, unfrozen: int | str) -> None:
    """Train the head and the last ``unfrozen`` blocks; freeze everything before them.

    ``unfrozen=0`` trains the head only, ``"all"`` trains everything (the stem too).
    Frozen parameters get ``requires_grad=False`` and their stages run in eval mode, so
    their BatchNorm running statistics stay bit-identical (the paper's code let them
    drift).

    Raises:
        ConfigError: ``unfrozen`` exceeds the number of blocks the model has.
    """
    unfrozen = parse_unfrozen(unfrozen)
    n_blocks = len(model.blocks())
    if unfrozen == ALL:
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


def prepare_finetune(model: TransferModel, num_classes: int, unfrozen: int | str,
                     head_init: str = "normal", seed: int = 0) -> TransferModel:
    """New head for ``num_classes`` and the last ``unfrozen`` blocks trainable (in place)."""
    gen = torch.Generator().manual_seed(int(seed))
    model.reset_classifier(num_classes, head_init, gen)
    set_unfrozen_blocks(model, unfrozen)
    return model


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
