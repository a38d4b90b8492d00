"""Versions of computations whose results enter run ids (torch-free: the store reads them).

``INPUT_PIPELINE``: how augmented runs draw their random numbers. 1: per image through
torchvision's v2 transforms (before 2026-12); 2: per batch, :mod:`robust_transfer.data.augment`.
"""

INPUT_PIPELINE = 2
