"""Train/eval mode as a context: set for a block of code, restored after, even on errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn as nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block and restore its previous mode after.

    Attacks, saliency and feature extraction run the model in eval mode (BatchNorm uses
    its running statistics) whatever mode the caller had it in.

    Example:
        >>> with eval_mode(model):
        ...     x_adv = attack(model, x, y)
    """
    # every submodule's own flag: frozen stages of a training model stay in eval mode
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, was_training in modes:
            m.training = was_training
