"""Architectures, the blocks view, checkpoints and the model zoo."""

from robust_transfer.models.arch import (
    ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    SmallResNet,
    TransferModel,
    create_model,
)
from robust_transfer.models.checkpoints import load_model, save_model
from robust_transfer.models.modes import eval_mode
from robust_transfer.models.finetune import (
    ALL,
    parse_unfrozen,
    prepare_finetune,
    set_unfrozen_blocks,
)

__all__ = [
    "ALL", "ARCHS", "IMAGENET_MEAN", "IMAGENET_STD", "Normalize", "SmallResNet", "TransferModel",
    "create_model", "eval_mode", "load_model", "parse_unfrozen", "prepare_finetune", "save_model",
    "set_unfrozen_blocks",
]
