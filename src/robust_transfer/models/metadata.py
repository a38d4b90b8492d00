"""Our checkpoint files without torch: their paths, their JSON metadata, their checksum.

The metadata has a schema (:data:`SCHEMA`: types and ranges), and the facts the model rests
on (:data:`HEADER_FIELDS`) are also stored in the safetensors header, which the sha256
covers; :func:`read_metadata` checks both and that they agree, so an edited or swapped
``.json`` cannot change a model quietly. Files written before the header held them are
checked against the schema only.

A robust-transfer checkpoint is ``<stem>.safetensors`` (the weights) plus ``<stem>.json``
(the metadata, with the sha256 of the weights). Listing the zoo and checking a study need
only this module, so they run without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
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
HEADER_KEY = "robust_transfer.metadata"  # safetensors header metadata: JSON of HEADER_FIELDS
HEADER_FIELDS = ("format", "format_version", "arch", "num_classes", "input_size", "channels",
                 "mean", "std", "source_dataset", "training", "norm", "eps", "clean_acc",
                 "robust_acc", "arch_kwargs")
REPLACES_KEY = "replaces_sha256"  # set by embed_header: the sha256 of the same tensors before
_MAX_HEADER = 100 << 20  # safetensors' own limit on the header's size



def timm_name(arch: str) -> str | None:
    """The timm model name of a ``timm:<name>`` architecture; None for any other."""
    return arch[len(TIMM_PREFIX):] if arch.startswith(TIMM_PREFIX) else None


def timm_arch(name: str) -> str:
    """Our architecture name of a timm model: ``convnext_atto`` -> ``timm:convnext_atto``
    (a name that already has the prefix is returned as is)."""
    return name if name.startswith(TIMM_PREFIX) else f"{TIMM_PREFIX}{name}"

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
        CheckpointError: either file is missing, the JSON is unreadable or incomplete,
            a field breaks :data:`SCHEMA`, or the weights' header disagrees with it.
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
    version = meta["format_version"]
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(f"{meta_path} has format version {version}; this "
                              f"robust-transfer reads up to {FORMAT_VERSION}: upgrade it")
    problems = schema_problems(meta)
    if problems:
        raise CheckpointError(f"metadata {meta_path}: {problems[0]}; fix the file or save the "
                              "model again")
    _check_header(weights, meta_path, meta)
    return meta


# --- the metadata schema and the copy in the safetensors header ---------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _rng(lo: float, hi: float, kind=_is_num):
    return lambda v: kind(v) and lo <= v <= hi


def _optional(check):
    return lambda v: v is None or check(v)


def _normaliser(v: Any) -> bool:
    return isinstance(v, list) and len(v) in (1, 3) and all(_is_num(x) for x in v)


# field -> (check, what a valid value is); fields not listed are free-form
SCHEMA: dict[str, tuple[Any, str]] = {
    "format": (lambda v: v == FORMAT_NAME, f"'{FORMAT_NAME}'"),
    "format_version": (_rng(1, FORMAT_VERSION, _is_int), f"an integer 1..{FORMAT_VERSION}"),
    "sha256": (lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
               "64 lowercase hex digits"),
    "arch": (lambda v: isinstance(v, str) and bool(v), "an architecture name"),
    "num_classes": (_rng(1, 1_000_000, _is_int), "an integer >= 1"),
    "input_size": (_rng(8, 4096, _is_int), "an integer 8..4096 (pixels)"),
    "channels": (_optional(lambda v: v in (1, 3) and _is_int(v)), "1 or 3"),
    "mean": (_normaliser, "a list of 1 or 3 finite numbers"),
    "std": (lambda v: _normaliser(v) and all(x > 0 for x in v), "a list of 1 or 3 numbers > 0"),
    "eps": (_optional(_rng(0, 1e6)), "a finite number >= 0 (pixel units) or null"),
    "norm": (_optional(lambda v: v in ("l2", "linf", "none")), "'l2', 'linf', 'none' or null"),
    "training": (_optional(lambda v: isinstance(v, str)), "a string"),
    "source_dataset": (_optional(lambda v: isinstance(v, str)), "a dataset name"),
    "clean_acc": (_optional(lambda v: _rng(0, 1)(v) or _nan(v)), "a fraction in [0, 1] or null"),
    "robust_acc": (_optional(lambda v: _rng(0, 1)(v) or _nan(v)), "a fraction in [0, 1] or null"),
    "epochs": (_optional(_rng(1, 10**9, _is_int)), "an integer >= 1"),
    "attack_steps": (_optional(_rng(0, 10**9, _is_int)), "an integer >= 0 or null"),
    "attack_step_size": (_optional(_rng(0, 1e6)), "a finite number >= 0 or null"),
}


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def schema_problems(meta: Mapping[str, Any]) -> list[str]:
    """What in ``meta`` breaks :data:`SCHEMA` (present fields only), one phrase each."""
    return [f"field '{key}' must be {what}, got {_short(meta[key])}"
            for key, (check, what) in SCHEMA.items() if key in meta and not check(meta[key])]


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def header_metadata(record: Mapping[str, Any]) -> dict[str, str]:
    """The safetensors header metadata for ``record``: the :data:`HEADER_FIELDS` it has."""
    facts = {k: record[k] for k in HEADER_FIELDS if k in record}
    return {"format": FORMAT_NAME, HEADER_KEY: json.dumps(facts, sort_keys=True)}


def read_header_metadata(weights: str | os.PathLike) -> dict[str, Any] | None:
    """The facts stored in a safetensors file's header, without reading the tensors.

    Returns:
        The :data:`HEADER_FIELDS` the header holds, or ``None`` for files written before
        headers held them.

    Raises:
        CheckpointError: the header is truncated or not JSON.
    """
    path = Path(weights)
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= min(_MAX_HEADER, path.stat().st_size - 8):
                raise ValueError(f"header length {size} does not fit the file")
            header = json.loads(f.read(size))
        text = (header.get("__metadata__") or {}).get(HEADER_KEY)
        return None if text is None else json.loads(text)
    except (OSError, ValueError, AttributeError) as err:
        raise CheckpointError(f"cannot read the header of {path}: {type(err).__name__}: "
                              f"{' '.join(str(err).split())[:120]}; the file "
                              "is corrupt or truncated: restore or re-save it") from None


def _check_header(weights: Path, meta_path: Path, meta: Mapping[str, Any]) -> None:
    facts = read_header_metadata(weights)
    if facts is None:
        return  # an older file: the sidecar alone, checked against the schema
    differ = [k for k, v in facts.items() if not _same(meta.get(k, "<absent>"), v)]
    if differ:
        key = differ[0]
        raise CheckpointError(
            f"{meta_path.name} and the header of {weights.name} disagree on "
            f"{', '.join(differ)} ({key}: {_short(meta.get(key))} in the .json, {_short(facts[key])} "
            "in the weights): the metadata was edited or belongs to other weights; restore "
            "it or save the model again")


def _same(a: Any, b: Any) -> bool:
    return a == b or (_nan(a) and _nan(b))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
