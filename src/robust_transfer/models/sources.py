"""The one place where a source's name or path becomes a record and then a model.

Every way of naming a source is resolved here, for the CLI, the study (its pre-flight,
its workers and replays) and :func:`robust_transfer.create_model`:

* an embedded zoo name (``fmnist-l2-eps1``): our checkpoint shipped in the package;
* a published zoo name (``resnet50-l2-eps3``): a robustness-library file in the zoo folder;
* a torchvision zoo name (``torchvision-resnet50``): torchvision's weights in torch hub's cache;
* a path: our checkpoint (``x``, ``x.safetensors``, ``x.json``), a robustness-library file
  or a torchvision state dict;
* ``timm:NAME``: a timm architecture with timm's pretrained weights.

:func:`resolve_source` gives a :class:`SourceRecord` (what the source is, where its weights
are and their sha256) without building a model where the files say enough;
:func:`load_source` builds the model, checking the weights' sha256 and loading every tensor.
"""

from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust_transfer.errors import CheckpointError, ConfigError
from robust_transfer.models import zoo
from robust_transfer.models.metadata import (
    checkpoint_paths,
    is_ours,
    read_metadata,
    sha256_file,
    timm_name,
)

if TYPE_CHECKING:
    import torch

    from robust_transfer.models.base import TransferModel

KINDS = ("embedded", "published", "torchvision", "checkpoint", "timm")
PATH_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".json", ".tar")


@dataclass(frozen=True)
class SourceRecord:
    """What a source model is and where its weights are.

    Attributes:
        name: the zoo name or path as given (``timm:NAME`` for timm models).
        path: the weights file (``None`` for timm models, whose weights timm caches).
        sha256: of the weights file: recorded in our metadata, else computed from the file
            (``None`` for timm models).
        arch: the architecture (a registered name, or ``timm:NAME``).
        norm: threat model of its training, ``l2``, ``linf`` or ``none`` (natural);
            ``None`` when the files do not say.
        eps: training radius in pixel units; ``None`` when the files do not say.
        input_size: square input size the model expects.
        num_classes: classes of its head.
        kind: one of :data:`KINDS`.
        metadata: everything else known (our JSON, the zoo entry, what a file holds).
    """

    name: str
    path: Path | None
    sha256: str | None
    arch: str
    norm: str | None
    eps: float | None
    input_size: int
    num_classes: int
    kind: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the metadata, then the record's own fields over it."""
        return {**self.metadata, "name": self.name, "kind": self.kind, "arch": self.arch,
                "path": str(self.path) if self.path else None, "sha256": self.sha256,
                "norm": self.norm, "eps": self.eps, "input_size": self.input_size,
                "num_classes": self.num_classes}


class SourceMissingError(CheckpointError):
    """A known source whose weights are not on this machine.

    Attributes:
        record: what is known without the file (``None`` for a path that does not exist).
        fix: what to do, in one sentence.
    """

    def __init__(self, fix: str, record: SourceRecord | None = None) -> None:
        super().__init__(fix)
        self.fix, self.record = fix, record


def looks_like_path(text: str) -> bool:
    """Whether a source string is a file path rather than a zoo or timm name."""
    if timm_name(text) is not None:
        return False
    return "/" in text or os.sep in text or text.endswith(PATH_SUFFIXES)


# --- resolving -------------------------------------------------------------------------
def resolve_source(source: str | os.PathLike | SourceRecord) -> SourceRecord:
    """The record of a source named by zoo name, path or ``timm:NAME``.

    Only robustness-library and torchvision files given by path are read whole (their
    architecture is told from their keys); for every other kind the record comes from
    metadata, so resolving is cheap and :func:`load_source` checks the weights.

    Args:
        source: see the module docstring; a :class:`SourceRecord` is returned as is.

    Returns:
        The record.

    Raises:
        SourceMissingError: a zoo model or path whose file is not on this machine (the
            message says where to put it or how to fetch it).
        UnknownNameError: neither a zoo name nor a path (close zoo names suggested).
        CheckpointError: a file that cannot be read.
        ConfigError: a timm name while the timm backbone is unavailable.
    """
    if isinstance(source, SourceRecord):
        return source
    text = str(source)
    if timm_name(text) is not None:
        return _timm_record(text)
    kind = zoo.zoo_kind(text)
    if kind == "embedded":
        return _ours(text, Path(zoo.get_embedded(text)["path"]), "embedded")  # type: ignore[index]
    if kind == "published":
        return _published(text)
    if kind == "torchvision":
        return _torchvision(text)
    path = Path(text).expanduser()
    if checkpoint_paths(path)[0].is_file() and is_ours(path):
        return _ours(text, checkpoint_paths(path)[0], "checkpoint")
    if path.is_file():
        return _torch_file(text, path)
    if looks_like_path(text):
        raise SourceMissingError(f"checkpoint {path} does not exist; put the file there or "
                                 "give another path or zoo name")
    raise zoo.unknown_zoo_name(text, " (or give a checkpoint path, or timm:NAME)")


def _threat(meta: dict[str, Any]) -> tuple[str | None, float | None]:
    """(norm, eps) as metadata states them; natural training is norm ``none``, eps 0."""
    eps, norm = meta.get("eps"), meta.get("norm")
    if meta.get("training") == "natural" or eps == 0:
        return "none", 0.0
    return (str(norm) if norm else None), (float(eps) if eps is not None else None)


def _ours(name: str, weights: Path, kind: str) -> SourceRecord:
    meta = read_metadata(weights)
    norm, eps = _threat(meta)
    return SourceRecord(name, weights, str(meta["sha256"]), str(meta["arch"]), norm, eps,
                        int(meta["input_size"]), int(meta["num_classes"]), kind, meta)


def _published(name: str) -> SourceRecord:
    entry = zoo.get_published(name)
    path = zoo.zoo_dir() / entry.file
    record = SourceRecord(name, None, None, entry.arch, entry.norm if entry.eps else "none",
                          entry.eps, 224, entry.num_classes, "published", entry.to_dict())
    if not path.is_file():
        raise SourceMissingError(zoo.missing_message(name), record)
    return replace(record, path=path, sha256=file_sha256(path))


def _torchvision(name: str) -> SourceRecord:
    entry = zoo.TORCHVISION.get(name)
    path = zoo.torch_hub_checkpoints() / entry.file
    meta = {"format": "torchvision", "weights": entry.weights, "url": entry.url,
            "source_dataset": entry.source_dataset, "training": "natural", "norm": "none",
            "eps": 0.0, "clean_acc": entry.clean_acc}
    record = SourceRecord(name, None, None, entry.arch, "none", 0.0, entry.input_size,
                          entry.num_classes, "torchvision", meta)
    if not path.is_file():
        raise SourceMissingError(zoo.missing_message(name), record)
    return replace(record, path=path, sha256=file_sha256(path))


def _torch_file(name: str, path: Path) -> SourceRecord:
    from robust_transfer.models.checkpoints import load_model

    model, meta = load_model(path)  # the architecture is told from the keys
    norm, eps = _threat(meta)
    return SourceRecord(name, path, file_sha256(path), model.arch, norm, eps, model.input_size,
                        model.num_classes, "checkpoint", meta)


def _timm_record(text: str) -> SourceRecord:
    name = timm_name(text) or text
    import torch

    with torch.device("meta"):  # the structure only: no memory, no init, no download
        model = timm_source(name, pretrained=False, num_classes=None)
    return SourceRecord(text, None, None, model.arch, None, None, model.input_size,
                        model.num_classes, "timm", {"timm_name": name})


def timm_source(name: str, pretrained: bool, num_classes: int | None = None) -> TransferModel:
    """A timm architecture as a source (``timm:`` prefix optional), through the timm backbone.

    Raises:
        ConfigError: the timm backbone module (or timm) is not installed.
    """
    name = timm_name(name) or name
    try:
        from robust_transfer.models.timm_backbone import create_timm_source
    except ImportError as err:
        raise ConfigError(f"timm sources need robust_transfer.models.timm_backbone and timm "
                          f"(pip install 'robust-transfer[timm]'): {err}") from None
    return create_timm_source(name, pretrained=pretrained, num_classes=num_classes)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, computed once per process while its size and mtime stay the same."""
    st = os.stat(path)
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


# --- loading ---------------------------------------------------------------------------
def load_source(source: str | os.PathLike | SourceRecord,
                device: str | torch.device = "cpu") -> TransferModel:
    """The source model, its weights checked against the record and loaded whole.

    Args:
        source: a zoo name, a path, ``timm:NAME`` or a :class:`SourceRecord` (e.g. one a
            study pinned: the weights must still have its sha256).
        device: where the model goes.

    Returns:
        The model in eval mode; its record is ``model.source_record``.

    Raises:
        SourceMissingError, UnknownNameError: see :func:`resolve_source`.
        CheckpointError: the weights are corrupt, truncated, unsafe, hold NaN or
            infinite values, or differ from the record's sha256.
    """
    record = resolve_source(source)
    if record.kind == "timm":
        model = timm_source(str(record.metadata.get("timm_name", record.name)),
                            pretrained=True, num_classes=None)
        found: dict[str, Any] = {}
    else:
        model, found = _load_file(record)
    require_finite(model, record.name)
    # what the file itself says (format, epoch, normaliser) joins the record's metadata
    model.source_record = replace(record, metadata={**record.metadata, **found})
    return model.to(device).eval()


def require_finite(model: torch.nn.Module, name: str) -> None:
    """Refuse a model whose weights or buffers hold NaN or infinite values.

    Such a model predicts one class for every input; fine-tuning or evaluating it gives
    numbers that look like results (chance accuracy) but mean nothing.

    Raises:
        CheckpointError: naming the first non-finite tensor and how many values are bad.
    """
    import torch

    for key, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if tensor.is_floating_point() and tensor.device.type != "meta":
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise CheckpointError(f"source '{name}': weights hold NaN or infinite values "
                                      f"({bad} of {tensor.numel()} in '{key}'); the checkpoint is "
                                      "damaged or its training diverged: use another one")


def _load_file(record: SourceRecord) -> tuple[TransferModel, dict[str, Any]]:
    from robust_transfer.models.checkpoints import load_model

    if record.path is None:
        raise CheckpointError(f"source '{record.name}' has no weights file on this machine")
    if record.kind in ("embedded",) or (record.kind == "checkpoint" and is_ours(record.path)):
        model, meta = load_model(record.path)  # checks the sha256 in its metadata
        actual = str(meta["sha256"])
        meta = {}  # the record already holds this metadata
    else:
        actual = file_sha256(record.path)
        _check_hash_prefix(record, actual)
        entry = zoo.PUBLISHED.get(record.name) if record.kind == "published" else None
        fixed = record.kind in ("published", "torchvision")
        if entry is not None and hasattr(entry, "load_checkpoint"):  # zoo_timm: its own format
            model, meta = entry.load_checkpoint(record.path)
        else:
            model, meta = load_model(record.path, arch=record.arch if fixed else None,
                                     num_classes=record.num_classes if fixed else None)
    if record.sha256 is not None and actual != record.sha256:
        raise CheckpointError(f"{record.path} changed: its sha256 is {actual[:12]}..., not the "
                              f"{record.sha256[:12]}... it had when '{record.name}' was resolved "
                              "(e.g. by the study that pinned it); restore it")
    return model, meta


def _check_hash_prefix(record: SourceRecord, actual: str) -> None:
    if record.kind != "torchvision":
        return
    prefix = zoo.TORCHVISION.get(record.name).hash_prefix
    if not actual.startswith(prefix):
        raise CheckpointError(f"{record.path} has sha256 {actual[:12]}..., but torchvision's file "
                              f"name promises {prefix}...: it is corrupt or truncated; delete it "
                              f"and run 'robust-transfer zoo fetch {record.name} --download'")

