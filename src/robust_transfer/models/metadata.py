"""Our checkpoint files without torch: their paths, their JSON metadata, their checksum.

A robust-transfer checkpoint is ``<stem>.safetensors`` (the weights) plus ``<stem>.json``
(the metadata, with the sha256 of the weights). Listing the zoo and checking a study need
only this module, so they run without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from robust_transfer.errors import CheckpointError

FORMAT_NAME = "robust_transfer"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
METADATA_SUFFIX = ".json"
TIMM_PREFIX = "timm:"  # a timm architecture's name in our metadata: timm:<timm name>
REQUIRED_FIELDS = ("format", "format_version", "sha256", "arch", "num_classes", "input_size",
                   "mean", "std")
_CHUNK = 1 << 20


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """The weights and metadata files of our format for ``path``.

    Args:
        path: ``<stem>``, ``<stem>.safetensors`` or ``<stem>.json``.

    Returns:
        ``(<stem>.safetensors, <stem>.json)``.
    """
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (WEIGHTS_SUFFIX, METADATA_SUFFIX) else p
    return Path(f"{stem}{WEIGHTS_SUFFIX}"), Path(f"{stem}{METADATA_SUFFIX}")


def is_ours(path: str | os.PathLike) -> bool:
    """Whether ``path`` names one of our checkpoints (by suffix, or by its files existing)."""
    p = Path(path)
    return p.suffix in (WEIGHTS_SUFFIX, METADATA_SUFFIX) or (
        not p.is_file() and checkpoint_paths(p)[0].is_file())


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of one of our checkpoints, checked but without reading the weights.

    Args:
        path: ``<stem>``, ``<stem>.safetensors`` or ``<stem>.json``.

    Returns:
        The JSON sidecar's contents.

    Raises:
        CheckpointError: either file is missing, or the JSON is unreadable or incomplete.
    """
    weights, meta_path = checkpoint_paths(path)
    if not weights.is_file():
        raise CheckpointError(f"no checkpoint weights at {weights}")
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path} is missing: a robust-transfer checkpoint is {weights.name} "
                              f"plus its metadata {meta_path.name}; save the model again")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        words = " ".join(str(err).split())
        raise CheckpointError(f"cannot read metadata {meta_path}: {type(err).__name__}: "
                              f"{words}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{meta_path} is not robust-transfer checkpoint metadata "
                              f"(no \"format\": \"{FORMAT_NAME}\")")
    missing = [k for k in REQUIRED_FIELDS if k not in meta]
    if missing:
        raise CheckpointError(f"metadata {meta_path} lacks {', '.join(missing)}; save the model again")
    if not isinstance(meta["format_version"], int) or meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{meta_path} has format version {meta['format_version']!r}; this "
                              f"robust-transfer reads up to {FORMAT_VERSION}: upgrade it")
    return meta


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
