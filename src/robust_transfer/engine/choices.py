"""The named choices of the engine's configs, importable without torch (the recipe's field
specs and the study store read them; ``study status`` must not import torch)."""

from __future__ import annotations

NORMS = ("l2", "linf")
"""Threat models of the attacks: L2 and Linf balls in pixel space."""
SCHEDULES = ("step", "cosine", "constant")
"""Learning-rate schedules of :class:`~robust_transfer.engine.training.OptimConfig`."""
