"""Result folders of the explanation commands: arrays, JSON summaries and PNG figures.

Used by :mod:`robust_transfer.influence` and :mod:`robust_transfer.saliency`. Every file
goes through :func:`robust_transfer.io.atomic_write`, so it is whole or absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from robust_transfer.errors import OutputExistsError
from robust_transfer.io import atomic_write


def prepare_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create ``path``; refuse an existing one unless ``overwrite``.

    Args:
        path: the folder.
        overwrite: write into an existing folder.

    Returns:
        ``path``.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output folder {path} already exists; choose another or pass "
                                f"--overwrite to write into it")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as indented JSON (numpy values as numbers and lists).

    Returns:
        ``path``.
    """
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=2, sort_keys=True, default=_jsonable) + "\n")
    return Path(path)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray | None]) -> Path:
    """Write the arrays that are not ``None`` to an ``.npz``.

    Returns:
        ``path``.
    """
    with atomic_write(path, "wb") as f:
        kept: dict[str, Any] = {k: v for k, v in arrays.items() if v is not None}
        np.savez(f, **kept)
    return Path(path)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120, **savefig_kwargs: Any) -> Path:
    """Write a figure whole or not at all, in the format its suffix names (PNG, SVG, PDF).

    Args:
        fig: the figure.
        path: where; its suffix picks the format.
        dpi: resolution of raster formats.
        savefig_kwargs: passed to ``Figure.savefig`` (default ``bbox_inches="tight"``).

    Returns:
        ``path``.
    """
    path = Path(path)
    savefig_kwargs.setdefault("bbox_inches", "tight")
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png", **savefig_kwargs)
    return path


def to_display(image: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` uint8 or float in [0, 1] -> ``[H, W]`` (one channel) or ``[H, W, 3]``."""
    img = np.asarray(image)
    img = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
    img = np.clip(img, 0.0, 1.0)
    return img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
