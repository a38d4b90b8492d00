"""Check a study against this machine before any run starts.

Everything a run will need is looked up once, in the driver: each source's checkpoint
(its sha256, architecture, number of blocks, eps and norm) and each target's training-set
size. A spec that cannot finish is refused with every missing file and where to put it,
rather than failing an hour in.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robust_transfer.data import dataset_info, load_dataset
from robust_transfer.data.datasets import data_root as default_data_root
from robust_transfer.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    RobustTransferError,
    UnknownNameError,
)
from robust_transfer.study.spec import RunConfig, SourceSpec, StudySpec, looks_like_path

# training / test split sizes of the registered datasets, for checks and cost estimates
# when the files are not on this machine
KNOWN_SIZES = {
    "digits": (1348, 449), "mnist": (60000, 10000), "kmnist": (60000, 10000),
    "fmnist": (60000, 10000), "cifar10": (50000, 10000), "cifar100": (50000, 10000),
    "svhn": (73257, 26032),
}


@dataclass(frozen=True)
class Missing:
    """Something a study needs that is not on this machine, and what to do about it."""

    kind: str  # "checkpoint" or "dataset"
    name: str
    fix: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.fix}"


class MissingInputsError(RobustTransferError):
    """Checkpoints or datasets a study needs are missing; ``items`` lists each."""

    def __init__(self, items: list[Missing]) -> None:
        self.items = items
        kinds = sorted({m.kind for m in items})
        super().__init__(f"{len(items)} input(s) missing ({' and '.join(kinds)}), nothing was "
                         f"run: {'; '.join(str(m) for m in items)}")


@dataclass(frozen=True)
class SourceInfo:
    """A source as found on this machine.

    Attributes:
        label, model: from the spec.
        path: the checkpoint file (``None`` when missing).
        sha256: of the weights file (``None`` when missing).
        arch, n_blocks, input_size: the architecture and its blocks.
        eps, norm: training radius and threat model (``norm="none"`` for natural).
    """

    label: str
    model: str
    path: str | None
    sha256: str | None
    arch: str
    n_blocks: int
    input_size: int
    eps: float
    norm: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TargetInfo:
    name: str
    train_size: int
    test_size: int
    available: bool


@dataclass
class ResolvedStudy:
    """A spec plus what this machine has for it."""

    spec: StudySpec
    sources: dict[str, SourceInfo]
    targets: dict[str, TargetInfo]
    missing: list[Missing] = field(default_factory=list)
    data_root: str | None = None

    def require_complete(self) -> None:
        if self.missing:
            raise MissingInputsError(self.missing)


def resolve_study(spec: StudySpec, data_root: str | os.PathLike | None = None) -> ResolvedStudy:
    """Find every source and target of ``spec`` and check every run against them.

    Args:
        spec: the study.
        data_root: dataset folder (default: the spec's ``data_root``, else the usual one).

    Returns:
        The resolved study; ``missing`` lists what is absent (call ``require_complete``).

    Raises:
        UnknownNameError: a target or zoo name that does not exist (valid ones listed).
        ConfigError: n larger than a target's training set, more unfrozen blocks than a
            source has, a source whose eps/norm is unknown.
        CheckpointError: a checkpoint exists but cannot be read.
    """
    root = str(data_root or spec.data_root or default_data_root())
    missing: list[Missing] = []
    sources = {s.label: _resolve_source(s, spec, missing) for s in spec.sources}
    targets = {t: _resolve_target(t, spec, root, missing) for t in _targets(spec)}
    resolved = ResolvedStudy(spec, sources, targets, missing, root)
    check_runs(resolved, spec.runs())
    return resolved


def _targets(spec: StudySpec) -> list[str]:
    return list(dict.fromkeys(t for g in spec.grids for t in g.targets))


# --- sources -------------------------------------------------------------------------
def _resolve_source(src: SourceSpec, spec: StudySpec, missing: list[Missing]) -> SourceInfo:
    from robust_transfer.models import zoo

    try:
        if src.location in zoo.PUBLISHED:
            facts = _published(src, missing)
        elif looks_like_path(src.location):
            facts = _checkpoint_file(src, missing)
        else:
            facts = _embedded(src, zoo)
    except UnknownNameError as err:
        raise ConfigError(f"{spec.where()} line {src.line}: source '{src.label}': {err}") from None
    eps, norm = _threat(src, facts, spec)
    return SourceInfo(src.label, src.model, facts.get("path"), facts.get("sha256"), facts["arch"],
                      arch_blocks(facts["arch"]), int(facts["input_size"]), eps, norm)


def _published(src: SourceSpec, missing: list[Missing]) -> dict[str, Any]:
    from robust_transfer.models import zoo
    from robust_transfer.models.arch import ARCHS
    from robust_transfer.models.checkpoints import sha256_file

    entry = zoo.PUBLISHED.get(src.model)
    target = zoo.zoo_dir() / entry.file
    facts = {"arch": entry.arch, "input_size": ARCHS.get(entry.arch).input_size,
             "eps": entry.eps, "norm": entry.norm if entry.eps else "none"}
    if target.is_file():
        _check_arch(target, entry.arch, src)
        return {**facts, "path": str(target), "sha256": _cached_sha256(str(target), sha256_file)}
    missing.append(Missing("checkpoint", f"'{src.label}' ({src.model})",
                           f"put {entry.file} into {zoo.zoo_dir()} (download {entry.url}; "
                           f"or set ROBUST_TRANSFER_ZOO to the folder holding it)"))
    return facts


def _check_arch(path: Path, expected: str, src: SourceSpec) -> None:
    """A published name promises an architecture: refuse a file that holds another."""
    from robust_transfer.models.checkpoints import checkpoint_arch

    found = checkpoint_arch(path)
    if found != expected:
        raise CheckpointError(f"source '{src.label}' ({src.model}) is a {expected}, but {path} "
                              f"holds a {found} (told from its keys and shapes); replace the "
                              f"file with the published one or name the right model")


def _embedded(src: SourceSpec, zoo) -> dict[str, Any]:
    names = [m["name"] for m in zoo.embedded_models()]
    if src.model not in names:
        raise UnknownNameError(f"unknown zoo model '{src.model}'; valid: {', '.join(zoo.zoo_names())} "
                               "(or give a checkpoint path)")
    meta = next(m for m in zoo.embedded_models() if m["name"] == src.model)
    return _from_metadata(meta, meta["path"])


def _checkpoint_file(src: SourceSpec, missing: list[Missing]) -> dict[str, Any]:
    from robust_transfer.models.checkpoints import checkpoint_paths, read_metadata

    path = Path(src.location)
    weights, meta_path = checkpoint_paths(path)
    if meta_path.is_file() and weights.is_file():
        return _from_metadata(read_metadata(meta_path), str(weights))
    if path.is_file():
        return _torch_file(path)
    missing.append(Missing("checkpoint", f"'{src.label}'", f"{path} does not exist; put the "
                           "checkpoint there or fix 'model:' in the spec"))
    return {"arch": "unknown", "input_size": 0}


def _from_metadata(meta: dict[str, Any], path: str) -> dict[str, Any]:
    natural = meta.get("training") == "natural" or meta.get("eps") == 0
    return {"path": str(path), "sha256": meta["sha256"], "arch": meta["arch"],
            "input_size": meta["input_size"], "eps": 0.0 if natural else meta.get("eps"),
            "norm": "none" if natural else meta.get("norm")}


def _torch_file(path: Path) -> dict[str, Any]:
    from robust_transfer.models.checkpoints import load_model, sha256_file

    model, meta = load_model(path)  # reads robustness-library and torchvision files
    return {"path": str(path), "sha256": _cached_sha256(str(path), sha256_file),
            "arch": model.arch, "input_size": model.input_size}


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, hasher) -> str:
    return hasher(path)


def _threat(src: SourceSpec, facts: dict[str, Any], spec: StudySpec) -> tuple[float, str]:
    eps = src.eps if src.eps is not None else facts.get("eps")
    norm = src.norm if src.norm is not None else facts.get("norm")
    if facts["arch"] == "unknown":  # a missing file: reported as missing, told apart later
        return (float("nan") if eps is None else float(eps)), str(norm or "unknown")
    if eps == 0 and norm is None:
        norm = "none"
    if eps is None or norm is None:
        raise ConfigError(f"{spec.where()} line {src.line}: source '{src.label}': its checkpoint "
                          "does not record eps and norm; add 'eps:' and 'norm:' (l2, linf or none) "
                          "to its entry")
    return float(eps), ("none" if float(eps) == 0 else str(norm))


@functools.cache
def arch_blocks(arch: str) -> int:
    """Number of residual blocks of a registered architecture (0 for ``unknown``)."""
    if arch == "unknown":
        return 0
    import torch

    from robust_transfer.models import create_model

    with torch.device("meta"):  # no memory, no init cost: only the structure is needed
        return len(create_model(arch, 10).blocks())


# --- targets -------------------------------------------------------------------------
def _resolve_target(name: str, spec: StudySpec, root: str, missing: list[Missing]) -> TargetInfo:
    try:
        dataset_info(name)
    except (UnknownNameError, DatasetError) as err:
        line = next((g.lines.get("targets") for g in spec.grids if name in g.targets), 0)
        raise ConfigError(f"{spec.where()} line {line}: target: {err}") from None
    known = KNOWN_SIZES.get(name, (0, 0))
    try:
        train = train_split(name, root)
    except DatasetError as err:
        missing.append(Missing("dataset", name, str(err)))
        return TargetInfo(name, known[0], known[1], False)
    return TargetInfo(name, len(train), known[1] or len(load_split(name, "test", root)), True)


@functools.lru_cache(maxsize=8)
def load_split(name: str, split: str, root: str):
    """A dataset split, loaded once per process (workers share this cache)."""
    return load_dataset(name, split, root)


def train_split(name: str, root: str):
    return load_split(name, "train", root)


# --- per-run checks ------------------------------------------------------------------
def check_runs(resolved: ResolvedStudy, runs: list[RunConfig]) -> None:
    """Refuse runs asking for more images or blocks than exist (first offender named).

    Raises:
        ConfigError: with the spec line of the offending axis.
    """
    spec = resolved.spec
    for run in runs:
        target = resolved.targets[run.target]
        if run.n is not None and target.train_size and run.n > target.train_size:
            raise ConfigError(f"{spec.where()} line {_axis_line(spec, 'train_images', run.n)}: "
                              f"train_images {run.n} is larger than {run.target}'s training set "
                              f"({target.train_size} images); use at most {target.train_size} or 'all'")
        source = resolved.sources[run.source]
        if run.unfrozen_blocks != "all" and source.n_blocks and int(run.unfrozen_blocks) > source.n_blocks:
            raise ConfigError(f"{spec.where()} line {_axis_line(spec, 'unfrozen_blocks', run.unfrozen_blocks)}: "
                              f"unfrozen_blocks {run.unfrozen_blocks} is more than source "
                              f"'{source.label}' ({source.arch}) has: it has {source.n_blocks} blocks; "
                              f"use 0..{source.n_blocks} or 'all'")


def _axis_line(spec: StudySpec, axis: str, value: Any) -> int:
    """The line of the first grid whose ``axis`` holds ``value``."""
    return next((g.lines.get(axis, 0) for g in spec.grids if value in getattr(g, axis)), 0)


def require_checkpoint(info: SourceInfo) -> str:
    if info.path is None:
        raise CheckpointError(f"source '{info.label}' has no checkpoint on this machine")
    return info.path
