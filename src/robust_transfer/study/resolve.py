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
from typing import Any

from robust_transfer.data import dataset_info, load_dataset
from robust_transfer.data.datasets import data_root as default_data_root
from robust_transfer.data.subsets import check_validation_fit
from robust_transfer.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    RobustTransferError,
    UnknownNameError,
)
from robust_transfer.models.finetune import ALL
from robust_transfer.models.sources import (
    SourceMissingError,
    SourceRecord,
    load_source,
    resolve_source,
)
from robust_transfer.study.spec import RunConfig, SourceSpec, StudySpec

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
    num_classes: int = 0


@dataclass
class ResolvedStudy:
    """A spec plus what this machine has for it.

    Attributes:
        records: each available source's :class:`SourceRecord` by label (what workers
            load, through :func:`~robust_transfer.models.sources.load_source`).
    """

    spec: StudySpec
    sources: dict[str, SourceInfo]
    targets: dict[str, TargetInfo]
    missing: list[Missing] = field(default_factory=list)
    data_root: str | None = None
    records: dict[str, SourceRecord] = field(default_factory=dict)

    def require_complete(self) -> None:
        if self.missing:
            raise MissingInputsError(self.missing)


def resolve_study(spec: StudySpec, data_root: str | os.PathLike | None = None,
                  verify: bool = True) -> ResolvedStudy:
    """Find every source and target of ``spec`` and check every run against them.

    Args:
        spec: the study.
        data_root: dataset folder (default: the spec's ``data_root``, else the usual one).
        verify: load each source's weights whole and check their sha256 (the pre-flight
            of a real run); off, only metadata is read (a dry run's estimate).

    Returns:
        The resolved study; ``missing`` lists what is absent (call ``require_complete``).

    Raises:
        UnknownNameError: a target or zoo name that does not exist (valid ones listed).
        ConfigError: n larger than a target's training set, more unfrozen blocks than a
            source has, a source whose eps/norm is unknown.
        CheckpointError: a checkpoint exists but cannot be read, is truncated, or does
            not match the sha256 its metadata records.
    """
    root = str(data_root or spec.data_root or default_data_root())
    missing: list[Missing] = []
    records: dict[str, SourceRecord] = {}
    sources = {s.label: _resolve_source(s, spec, missing, verify, records) for s in spec.sources}
    targets = {t: _resolve_target(t, spec, root, missing) for t in _targets(spec)}
    resolved = ResolvedStudy(spec, sources, targets, missing, root, records)
    check_runs(resolved, spec.runs())
    return resolved


def _targets(spec: StudySpec) -> list[str]:
    return list(dict.fromkeys(t for g in spec.grids for t in g.targets))


# --- sources -------------------------------------------------------------------------
def _resolve_source(src: SourceSpec, spec: StudySpec, missing: list[Missing],
                    verify: bool, records: dict[str, SourceRecord]) -> SourceInfo:
    """The source's record; with ``verify``, its weights checked and loaded whole."""
    where = f"{spec.where()} line {src.line}: source '{src.label}'"
    try:
        record = resolve_source(src.location)
    except SourceMissingError as err:
        missing.append(Missing("checkpoint", f"'{src.label}'" + (
            f" ({src.model})" if err.record else ""), _missing_fix(src, err)))
        if err.record is None:  # a path that does not exist: nothing is known of it
            eps = src.eps if src.eps is not None else float("nan")
            return SourceInfo(src.label, src.model, None, None, "unknown", 0, 0, eps,
                              src.norm or "unknown")
        record = err.record
        n_blocks = arch_blocks(record.arch)
    except UnknownNameError as err:
        raise ConfigError(f"{where}: {err}") from None
    else:
        n_blocks = _verified_blocks(record, where) if verify else arch_blocks(record.arch)
        records[src.label] = record
    eps, norm = _threat(src, record, spec)
    return SourceInfo(src.label, src.model, str(record.path) if record.path else None,
                      record.sha256, record.arch, n_blocks, record.input_size, eps, norm)


def _missing_fix(src: SourceSpec, err: SourceMissingError) -> str:
    if err.record is None:
        return (f"{src.location} does not exist; put the checkpoint there or fix 'model:' "
                "in the spec")
    return f"{err.fix} (or set ROBUST_TRANSFER_ZOO to the folder holding it)" \
        if err.record.kind == "published" else err.fix


def _verified_blocks(record: SourceRecord, where: str) -> int:
    """Load the weights whole (sha256 checked): a damaged source stops the study here."""
    try:
        model = load_source(record)
    except CheckpointError as err:
        raise CheckpointError(f"{where}: {err}") from None
    return len(model.blocks())


def _threat(src: SourceSpec, record: SourceRecord, spec: StudySpec) -> tuple[float, str]:
    eps = src.eps if src.eps is not None else record.eps
    norm = src.norm if src.norm is not None else record.norm
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

    from robust_transfer.models.arch import build_architecture
    from robust_transfer.models.metadata import timm_name
    from robust_transfer.models.sources import timm_source

    with torch.device("meta"):  # no memory, no init cost: only the structure is needed
        if timm_name(arch) is not None:
            return len(timm_source(arch, pretrained=False).blocks())
        return len(build_architecture(arch, 10).blocks())


# --- targets -------------------------------------------------------------------------
def _resolve_target(name: str, spec: StudySpec, root: str, missing: list[Missing]) -> TargetInfo:
    try:
        classes = dataset_info(name).num_classes
    except (UnknownNameError, DatasetError) as err:
        line = next((g.lines.get("targets") for g in spec.grids if name in g.targets), 0)
        raise ConfigError(f"{spec.where()} line {line}: target: {err}") from None
    known = KNOWN_SIZES.get(name, (0, 0))
    try:
        train = train_split(name, root)
    except DatasetError as err:
        missing.append(Missing("dataset", name, str(err)))
        return TargetInfo(name, known[0], known[1], False, classes)
    return TargetInfo(name, len(train), known[1] or len(load_split(name, "test", root)), True,
                      train.info.num_classes)


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
        _check_validation(spec, run, target)
        source = resolved.sources[run.source]
        if run.unfrozen_blocks is not ALL and source.n_blocks and run.unfrozen_blocks > source.n_blocks:
            raise ConfigError(f"{spec.where()} line {_axis_line(spec, 'unfrozen_blocks', run.unfrozen_blocks)}: "
                              f"unfrozen_blocks {run.unfrozen_blocks} is more than source "
                              f"'{source.label}' ({source.arch}) has: it has {source.n_blocks} blocks; "
                              f"use 0..{source.n_blocks} or 'all'")


def _check_validation(spec: StudySpec, run: RunConfig, target: TargetInfo) -> None:
    """The run's validation hold-out and n, by the rule the run applies."""
    if not run.recipe.val_images or not target.train_size:
        return
    try:
        check_validation_fit(target.train_size, target.num_classes, run.recipe.val_images,
                             run.n, run.target)
    except ConfigError as err:
        raise ConfigError(f"{spec.where()} line {_recipe_line(spec)}: recipe val_images: "
                          f"{err}") from None


def _recipe_line(spec: StudySpec) -> int:
    """The first line of the spec's text naming ``val_images`` (0 if none does)."""
    return next((i for i, line in enumerate(spec.text.splitlines(), 1) if "val_images" in line), 0)


def _axis_line(spec: StudySpec, axis: str, value: Any) -> int:
    """The line of the first grid whose ``axis`` holds ``value``."""
    return next((g.lines.get(axis, 0) for g in spec.grids if value in getattr(g, axis)), 0)

