"""Figures: the class-match curve (the paper's Fig. 6) and influence grids (Fig. 5).

Drawn on :class:`matplotlib.figure.Figure` with the Agg canvas: no pyplot, no global
backend switch, safe in threads and on machines without a display.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from robust_transfer.analysis.palette import source_colors
from robust_transfer.influence.analysis import ClassMatchCurve
from robust_transfer.outputs import save_figure, to_display

__all__ = ["InfluenceGrid", "plot_class_match", "plot_influence_grids", "save_figure", "to_display"]

_TARGET_TITLES = {"test": "test images as targets", "train": "training images as targets"}


def plot_class_match(curves: Mapping[str, Sequence[ClassMatchCurve]],
                     path: str | os.PathLike) -> Path:
    """Fig. 6: share of top-k influential images with the target's class, per model.

    Args:
        curves: model name (``robust``, ``natural``, ...) -> its curves, one per kind of
            target (``test``, ``train``); each kind gets a panel, models share it.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    kinds = sorted({c.targets for cs in curves.values() for c in cs}, key=["test", "train"].index)
    fig = Figure(figsize=(5.0 * len(kinds), 3.8))
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    colors = source_colors(curves)  # the project's one colour per source
    for ax, kind in zip(axes, kinds, strict=True):
        of_kind = [(name, c) for name, cs in curves.items() for c in cs if c.targets == kind]
        for name, c in of_kind:
            line = ax.plot(c.ranks, c.share, color=colors[name],
                           label=f"{name} (top-1 {c.share[0]:.1%})")[0]
            ax.fill_between(c.ranks, c.low, c.high, color=line.get_color(), alpha=0.2, lw=0)
        chance = of_kind[0][1].chance  # same data for every model
        ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.1%})")
        ax.set(xlabel="rank k of influential training image", ylim=(0, 1),
               ylabel="share with the target's class", title=_TARGET_TITLES.get(kind, kind))
        ax.legend(fontsize=8)
    fig.suptitle("Class match of the k-th most influential training image (95% Wilson intervals)",
                 fontsize=10)
    return save_figure(fig, path)


@dataclass
class InfluenceGrid:
    """One model's panel of Fig. 5: test images and their most influential training images.

    Attributes:
        test_images: ``[r, C, H, W]`` uint8 or float in [0, 1].
        test_labels: ``[r]``.
        train_images: ``[r, k, C, H, W]``.
        train_labels: ``[r, k]``.
        scores: ``[r, k]`` influence of each shown training image.
        class_names: names of the labels.
    """

    test_images: np.ndarray
    test_labels: np.ndarray
    train_images: np.ndarray
    train_labels: np.ndarray
    scores: np.ndarray
    class_names: Sequence[str]


def plot_influence_grids(panels: Mapping[str, InfluenceGrid], path: str | os.PathLike,
                         title: str = "most helpful training images") -> Path:
    """Fig. 5: for each model a panel of test images and their top influential images.

    Panels (``robust``, ``natural``, ...) stand side by side. A training image's caption is
    its class, green when it matches the test image's class, and its score.

    Args:
        panels: model name -> :class:`InfluenceGrid`.
        path: the PNG to write.
        title: figure title.

    Returns:
        ``path``.
    """
    first = next(iter(panels.values()))
    rows, k = first.train_labels.shape
    fig = Figure(figsize=(1.2 * (k + 1) * len(panels) + 0.4, 1.35 * rows + 0.6))
    subfigs = np.atleast_1d(fig.subfigures(1, len(panels), wspace=0.04))  # type: ignore[arg-type]
    for sub, (name, grid) in zip(subfigs, panels.items(), strict=True):
        _draw_grid(sub, grid)
        sub.suptitle(name, fontsize=11)
    fig.suptitle(title, fontsize=11, y=1.02)
    return save_figure(fig, path)


def _draw_grid(sub: Figure, grid: InfluenceGrid) -> None:
    rows, k = grid.train_labels.shape
    axes = sub.subplots(rows, k + 1, squeeze=False)
    names = grid.class_names
    for r in range(rows):
        _show(axes[r, 0], grid.test_images[r], f"test: {names[grid.test_labels[r]]}", "black")
        for j in range(k):
            label = grid.train_labels[r, j]
            colour = "green" if label == grid.test_labels[r] else "red"
            caption = f"{names[label]}\n{grid.scores[r, j]:.2g}"
            _show(axes[r, j + 1], grid.train_images[r, j], caption, colour)


def _show(ax, image: np.ndarray, caption: str, colour: str) -> None:
    img = to_display(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_title(caption, fontsize=6, color=colour)
    ax.set_xticks([])
    ax.set_yticks([])
