"""Architectures, the blocks view, checkpoints, the model zoo and the source resolver.

Two factories, two names: :func:`build_architecture` builds a registered architecture with
random weights; :func:`robust_transfer.create_model` (:mod:`.factory`) resolves a source
model by zoo name or path, loads its weights and prepares it for fine-tuning.

The names below are loaded on first use (PEP 562), so ``robust_transfer.models.zoo`` and
``robust_transfer.models.metadata`` can be imported without torch (``zoo list`` answers at
once); everything else imports torch as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from robust_transfer.lazy import lazy_exports

_EXPORTS = {
    "ARCHS": "arch", "IMAGENET_MEAN": "base", "IMAGENET_STD": "base", "Normalize": "base",
    "SmallResNet": "arch", "TransferModel": "base", "build_architecture": "arch",
    "load_model": "checkpoints", "save_model": "checkpoints",
    "eval_mode": "modes",
    "ALL": "finetune", "parse_unfrozen": "finetune", "prepare_finetune": "finetune",
    "set_unfrozen_blocks": "finetune",
    "SourceRecord": "sources", "resolve_source": "sources", "load_source": "sources",
}

if TYPE_CHECKING:
    from robust_transfer.models.arch import ARCHS, SmallResNet, build_architecture
    from robust_transfer.models.base import IMAGENET_MEAN, IMAGENET_STD, Normalize, TransferModel
    from robust_transfer.models.checkpoints import load_model, save_model
    from robust_transfer.models.finetune import (
        ALL,
        parse_unfrozen,
        prepare_finetune,
        set_unfrozen_blocks,
    )
    from robust_transfer.models.modes import eval_mode
    from robust_transfer.models.sources import SourceRecord, load_source, resolve_source

__all__ = [
    "ALL", "ARCHS", "IMAGENET_MEAN", "IMAGENET_STD", "Normalize", "SmallResNet", "SourceRecord",
    "TransferModel", "build_architecture", "eval_mode", "load_model", "load_source", "parse_unfrozen",
    "prepare_finetune", "resolve_source", "save_model", "set_unfrozen_blocks",
]


__getattr__, __dir__ = lazy_exports(__name__, {k: f".{v}" for k, v in _EXPORTS.items()}, globals())
