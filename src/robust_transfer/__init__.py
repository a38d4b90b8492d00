"""robust-transfer: adversarially trained source models and how well they transfer.

Implements the system of "Adversarially-Trained Deep Nets Transfer Better"
(Utrera et al., arXiv 2007.05869): PGD source training, fine-tuning with the last k
blocks unfrozen, study grids, analysis with confidence intervals, influence functions
and saliency maps.

The few names a user needs are here; they load on first use, so ``import
robust_transfer`` (and ``robust-transfer --help``) does not import torch::

    import robust_transfer as rt

    model = rt.create_model("fmnist-l2-eps1", num_classes=10, unfrozen_blocks=1)
    rt.list_models("*l2*")
    train, test = rt.load_dataset("digits", "train"), rt.load_dataset("digits", "test")
    result = rt.finetune(rt.load_source("fmnist-l2-eps1"), train, test, n=200, unfrozen=rt.ALL)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from robust_transfer.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    OutputExistsError,
    RobustTransferError,
    UnknownNameError,
)
from robust_transfer.lazy import lazy_exports

__version__ = "0.1.0"

# name -> module it lives in, imported on first access (PEP 562)
_LAZY = {
    "create_model": "robust_transfer.models.factory",
    "list_models": "robust_transfer.models.factory",
    "resolve_source": "robust_transfer.models.sources",
    "load_source": "robust_transfer.models.sources",
    "SourceRecord": "robust_transfer.models.sources",
    "ALL": "robust_transfer.models.finetune",
    "save_model": "robust_transfer.models.checkpoints",
    "load_dataset": "robust_transfer.data",
    "finetune": "robust_transfer.engine.transfer",
    "Recipe": "robust_transfer.engine.recipe",
    "pgd": "robust_transfer.engine.attacks",
    "load_spec": "robust_transfer.study",
    "run_study": "robust_transfer.study",
}

if TYPE_CHECKING:
    from robust_transfer.data import load_dataset
    from robust_transfer.engine.attacks import pgd
    from robust_transfer.engine.recipe import Recipe
    from robust_transfer.engine.transfer import finetune
    from robust_transfer.models.checkpoints import save_model
    from robust_transfer.models.factory import create_model, list_models
    from robust_transfer.models.finetune import ALL
    from robust_transfer.models.sources import SourceRecord, load_source, resolve_source
    from robust_transfer.study import load_spec, run_study

__all__ = [
    "ALL", "CheckpointError", "ConfigError", "DatasetError", "OutputExistsError", "Recipe",
    "RobustTransferError", "SourceRecord", "UnknownNameError", "__version__", "create_model",
    "finetune", "list_models", "load_dataset", "load_source", "load_spec", "pgd",
    "resolve_source", "run_study", "save_model",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
