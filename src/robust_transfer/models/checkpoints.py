"""Save and load source models: our safetensors + JSON, robustness-library files, torchvision.

Three formats are read, one is written:

* ours: ``<stem>.safetensors`` holds the :class:`TransferModel` state dict (normaliser
  included) and ``<stem>.json`` beside it holds the metadata and the sha256 of the weights.
* the robustness library (MadryLab) and robust-models-transfer (Salman et al.): a
  torch-saved dict whose ``model`` (legacy: ``state_dict``) entry has the keys of
  ``DataParallel(AttackerModel)``: ``module.normalizer.new_mean|new_std``,
  ``module.model.<torchvision keys>`` and a redundant copy under ``module.attacker.``.
* a plain torchvision state dict, which gets the ImageNet normaliser.

Torch files are read with ``torch.load(weights_only=True)``: unpickling runs code, so
nothing but tensors, containers and numpy scalars is ever reconstructed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save

from robust_transfer.errors import CheckpointError, ConfigError, OutputExistsError
from robust_transfer.io import atomic_write, atomic_write_text
from robust_transfer.models.arch import build_architecture
from robust_transfer.models.base import IMAGENET_MEAN, IMAGENET_STD, TransferModel
from robust_transfer.models.metadata import (
    FORMAT_NAME,
    FORMAT_VERSION,
    HEADER_FIELDS,  # noqa: F401  (re-exported)
    REPLACES_KEY,
    WEIGHTS_SUFFIX,
    checkpoint_paths,
    header_metadata,
    is_ours,
    read_header_metadata,  # noqa: F401  (re-exported)
    read_metadata,
    schema_problems,
    sha256_file,
)

# written by save_model from the model itself; a caller's values for these are replaced
MODEL_FIELDS = ("arch", "num_classes", "input_size", "channels", "mean", "std")
# ResNet-50-style bottlenecks: width of layer1's first 1x1 conv -> architecture
_BOTTLENECK_WIDTH = {64: "resnet50", 128: "wide_resnet50_2"}


# --- our format: save ------------------------------------------------------------------
def save_model(model: TransferModel, path: str | os.PathLike, metadata: Mapping[str, Any],
               overwrite: bool = False) -> Path:
    """Write ``model`` as ``<path>.safetensors`` plus ``<path>.json``, each whole or not at all.

    Args:
        model: the model; its state dict includes the normaliser's mean and std.
        path: ``<stem>`` (a ``.safetensors`` or ``.json`` suffix is dropped).
        metadata: JSON-serialisable facts about the model, stored as given. Conventional
            keys: ``source_dataset``, ``training`` (``natural``, ``pgd``, ``fgsm_rs``),
            ``norm`` (``l2``/``linf``), ``eps`` (pixel space), ``attack_steps``,
            ``attack_step_size``, ``epochs``, ``clean_acc`` and ``robust_acc`` (fractions in
            [0, 1]) and ``command`` (what reproduces it). The fields in
            :data:`MODEL_FIELDS` are taken from the model.
        overwrite: replace an existing checkpoint at ``path``.

    Returns:
        The path of the ``.safetensors`` file.

    Raises:
        OutputExistsError: either file exists and ``overwrite`` is false.
        ConfigError: ``metadata`` is not JSON-serialisable, or breaks
            :data:`~robust_transfer.models.metadata.SCHEMA` (e.g. a non-numeric ``eps``).
    """
    weights, meta_path = checkpoint_paths(path)
    refuse_existing(path, overwrite)
    record = {**metadata, **_model_fields(model), "format": FORMAT_NAME,
              "format_version": FORMAT_VERSION}
    problems = schema_problems(record)
    if problems:
        raise ConfigError(f"checkpoint metadata: {problems[0]}")
    _to_json(record)  # refuse what JSON cannot hold before writing anything
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(state, metadata=header_metadata(record))
    record["sha256"] = hashlib.sha256(data).hexdigest()
    text = _to_json(record)
    # weights first, metadata last: a crash in between leaves a sha256 mismatch or a
    # missing .json, both refused on load, never a silently wrong model
    with atomic_write(weights, "wb") as f:
        f.write(data)
    atomic_write_text(meta_path, text)
    return weights


def refuse_existing(path: str | os.PathLike, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` if either file of checkpoint ``path`` exists.

    Callers that train before saving check this first, so no work is wasted.
    """
    existing = [str(p) for p in checkpoint_paths(path) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{' and '.join(existing)} already exist(s); "
                                "choose another path or pass overwrite=True (--overwrite)")


def embed_header(path: str | os.PathLike) -> Path:
    """Rewrite an older checkpoint's weights with its metadata in the header (tensors unchanged).

    The sidecar's sha256 is updated to the new file and the old one kept as
    ``replaces_sha256`` (a study pinned to it accepts the new file); the tensors are read
    back and must be bit-identical to the old ones before anything is replaced.

    Returns:
        The path of the ``.safetensors`` file.

    Raises:
        CheckpointError: the checkpoint does not load, or the rewrite would change a tensor.
    """
    weights, meta_path = checkpoint_paths(path)
    meta = read_metadata(weights)
    _verify_sha256(weights, meta_path, meta["sha256"])
    state = _read_safetensors(weights)
    data = save(state, metadata=header_metadata(meta))
    again = load(data)
    if again.keys() != state.keys() or not all(
            again[k].dtype == v.dtype and again[k].shape == v.shape
            and again[k].reshape(-1).view(torch.uint8).equal(v.reshape(-1).view(torch.uint8))
            for k, v in state.items()):
        raise CheckpointError(f"rewriting {weights} would change its tensors; left as it was")
    # same tensors, new file: studies pinned to the old sha256 may accept the new one
    text = _to_json({**meta, "sha256": hashlib.sha256(data).hexdigest(),
                     REPLACES_KEY: meta["sha256"]})
    with atomic_write(weights, "wb") as f:  # weights first: a crash leaves a refused mismatch
        f.write(data)
    atomic_write_text(meta_path, text)
    return weights


def _model_fields(model: TransferModel) -> dict[str, Any]:
    fields = {"arch": model.arch, "num_classes": model.num_classes, "input_size": model.input_size,
              "channels": model.channels, "mean": model.normalizer.mean.flatten().tolist(),
              "std": model.normalizer.std.flatten().tolist()}
    if getattr(model, "arch_kwargs", None):  # a timm architecture built with arguments
        fields["arch_kwargs"] = dict(model.arch_kwargs)
    return fields


def _to_json(record: Mapping[str, Any]) -> str:
    try:
        return json.dumps(record, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as err:
        raise ConfigError(f"checkpoint metadata must be JSON-serialisable: {err}") from None


# --- loading: dispatch -----------------------------------------------------------------
def load_model(path: str | os.PathLike, arch: str | None = None, num_classes: int | None = None,
               device: str | torch.device = "cpu") -> tuple[TransferModel, dict[str, Any]]:
    """Load a checkpoint in any supported format into a :class:`TransferModel`.

    Args:
        path: our checkpoint (``<stem>``, ``<stem>.safetensors`` or ``<stem>.json``), a
            robustness-library / robust-models-transfer file, or a torchvision state dict.
        arch: the architecture; inferred from key names and shapes when ``None``.
        num_classes: classes of the head; read from ``fc.weight`` when ``None``.
        device: where the model goes.

    Returns:
        The model in eval mode and its metadata (our JSON, or what the file tells:
        ``format``, ``arch``, ``num_classes``, ``mean``, ``std``, ``epoch``, ...).

    Raises:
        CheckpointError: missing, corrupt, truncated, unsafe or mismatched checkpoint.
    """
    p = Path(path)
    weights, meta_path = checkpoint_paths(p)
    if is_ours(p):
        model, meta = _load_ours(weights, meta_path, arch, num_classes)
    else:
        model, meta = _load_torch_file(p, arch, num_classes)
    return model.to(device).eval(), meta


# --- our format: load ------------------------------------------------------------------
def _load_ours(weights: Path, meta_path: Path, arch: str | None,
               num_classes: int | None) -> tuple[TransferModel, dict[str, Any]]:
    meta = read_metadata(weights)
    _check_requested(weights, meta, arch, num_classes)
    _verify_sha256(weights, meta_path, meta["sha256"])
    state = _read_safetensors(weights)
    model = build_architecture(meta["arch"], meta["num_classes"], tuple(meta["mean"]), tuple(meta["std"]),
                         meta["input_size"], **meta.get("arch_kwargs", {}))
    model.channels = meta.get("channels", model.channels)
    load_state_checked(model, state, weights, f"{meta['arch']} with {meta['num_classes']} classes")
    return model, meta


def _check_requested(weights: Path, meta: Mapping[str, Any], arch: str | None,
                     num_classes: int | None) -> None:
    for field, wanted in (("arch", arch), ("num_classes", num_classes)):
        if wanted is not None and wanted != meta[field]:
            raise CheckpointError(f"{weights} holds {field}={meta[field]}, not the requested "
                                  f"{wanted}; drop the option or pick a matching checkpoint")


def _verify_sha256(weights: Path, meta_path: Path, expected: str) -> None:
    actual = sha256_file(weights)
    if actual != expected:
        raise CheckpointError(f"{weights} does not match the sha256 recorded in {meta_path.name} "
                              f"(file {actual[:12]}..., recorded {str(expected)[:12]}...): it is "
                              "corrupt, truncated or was modified; restore or re-save it")


def _read_safetensors(weights: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {weights}: {_summary(err)}; re-save it") from None


# --- robustness library and torchvision files -------------------------------------------
def _load_torch_file(path: Path, arch: str | None,
                     num_classes: int | None) -> tuple[TransferModel, dict[str, Any]]:
    obj = read_torch_file(path)
    net_state, mean, std, fmt = split_state_dict(_state_dict_of(obj, path))
    arch_name = arch or infer_arch(net_state, path)
    classes = num_classes or _num_classes(net_state, path)
    model = build_architecture(arch_name, classes, mean, std)
    hint = "" if arch else " (architecture inferred from the key names; pass arch= to choose)"
    load_state_checked(model.net, net_state, path, f"{arch_name} with {classes} classes{hint}")
    meta = {"format": fmt, "source": str(path), **_model_fields(model), **_training_info(obj)}
    return model, meta


def read_torch_file(path: Path) -> Any:
    """A ``torch.save`` file read without running code (``weights_only``; numpy scalars allowed).

    Raises:
        CheckpointError: no such file, a file that pickles code, or a corrupt one.
    """
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (nor {path}{WEIGHTS_SUFFIX})")
    try:
        with torch.serialization.safe_globals(_numpy_globals()), warnings.catch_warnings():
            # torch warns about pickle protocols it may not support; failures still raise
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_unpickling_message(path, err)) from None
    # a corrupt file fails deep inside torch.load with almost any exception type
    except Exception as err:
        raise CheckpointError(f"cannot read {path}: {_summary(err)}; the file is corrupt, "
                              "truncated or not a PyTorch checkpoint: download it again") from None


def _numpy_globals() -> list[Any]:
    """What robustness-library files may pickle besides tensors: numpy scalars (accuracies)."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return [core.multiarray.scalar, np.dtype, *dtypes]


def _unpickling_message(path: Path, err: Exception) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    if found:
        return (f"refusing to load {path}: it pickles {found.group(1)}, not just weights, and "
                "unpickling it could run code; re-save model.state_dict() where you trust the file")
    return (f"cannot read {path}: {_summary(err)}; the file is corrupt, truncated, not a PyTorch "
            "checkpoint, or pickles more than weights (refused: unpickling could run code)")


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded file: ``obj['model']``, ``obj['state_dict']`` or ``obj``."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    valid = isinstance(obj, dict) and obj and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    if not valid:
        raise CheckpointError(f"{path} holds no state dict (a dict of tensors, alone or under "
                              f"'model' or 'state_dict'); found {_describe(obj)}")
    return obj


def split_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple, tuple, str]:
    """Map a robustness-library or torchvision state dict onto the backbone and normaliser.

    Args:
        state: the raw state dict, ``DataParallel``'s ``module.`` prefix allowed.

    Returns:
        ``(backbone state dict with torchvision keys, mean, std, format)`` where format is
        ``robustness`` (normaliser from ``normalizer.new_mean|new_std``, attacker copy
        dropped) or ``torchvision`` (ImageNet normaliser).

    Raises:
        CheckpointError: a robustness-library normaliser is incomplete.
    """
    state = _strip_prefix(state, "module.")  # DataParallel's wrapper
    if "normalizer.new_mean" not in state:
        return state, IMAGENET_MEAN, IMAGENET_STD, "torchvision"
    # the attacker's model and normaliser are the same modules saved twice: skip them
    net = {k.removeprefix("model."): v for k, v in state.items()
           if not k.startswith(("attacker.", "normalizer."))}
    std = state.get("normalizer.new_std")
    if std is None:
        raise CheckpointError("robustness-library checkpoint has normalizer.new_mean but no "
                              "normalizer.new_std; the file is incomplete")
    mean = tuple(state["normalizer.new_mean"].flatten().tolist())
    return net, mean, tuple(std.flatten().tolist()), "robustness"


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if all(k.startswith(prefix) for k in state):
        return {k.removeprefix(prefix): v for k, v in state.items()}
    return dict(state)


def infer_arch(state: Mapping[str, torch.Tensor], source: str | os.PathLike = "checkpoint") -> str:
    """Tell a registered architecture from a torchvision-style state dict.

    Args:
        state: backbone keys (``conv1.weight``, ``layer1.0.conv1.weight``, ...).
        source: names the checkpoint in error messages.

    Returns:
        ``small_resnet`` (no layer4), ``resnet18`` (basic blocks), ``resnet50`` or
        ``wide_resnet50_2`` (bottlenecks, told apart by their width).

    Raises:
        CheckpointError: the keys fit none of them.
    """
    first = state.get("layer1.0.conv1.weight")
    if "conv1.weight" not in state or "fc.weight" not in state or first is None:
        raise CheckpointError(f"cannot tell the architecture of {source}: no ResNet keys "
                              f"(conv1.weight, layer1.0.conv1.weight, fc.weight) among "
                              f"{_abbrev(sorted(state))}; pass arch= explicitly")
    if "layer4.0.conv1.weight" not in state:
        return "small_resnet"
    if "layer1.0.conv3.weight" not in state:
        return "resnet18"
    width = int(first.shape[0])
    if width not in _BOTTLENECK_WIDTH:
        raise CheckpointError(f"{source} has bottleneck width {width}, which matches no registered "
                              "architecture (resnet50: 64, wide_resnet50_2: 128)")
    return _BOTTLENECK_WIDTH[width]


def _num_classes(state: Mapping[str, torch.Tensor], source: Path) -> int:
    fc = state.get("fc.weight")
    if fc is None or fc.dim() != 2:
        raise CheckpointError(f"{source} has no 2-D fc.weight to read the number of classes "
                              "from; pass num_classes=")
    return int(fc.shape[0])


def _training_info(obj: Any) -> dict[str, Any]:
    """Scalars the robustness library stores beside the weights (epoch, accuracies)."""
    if not isinstance(obj, dict):
        return {}
    scalars = {key: _scalar(obj.get(key)) for key in ("epoch", "prec1", "nat_prec1", "adv_prec1")}
    return {key: value for key, value in scalars.items() if value is not None}


def _scalar(value: Any) -> int | float | None:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # a numpy scalar
        return value.item()
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# --- fitting a state dict --------------------------------------------------------------
def load_state_checked(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: Path,
                target: str) -> None:
    """``load_state_dict(strict=True)`` after a check that explains any mismatch in one line."""
    problems = _fit_problems(module.state_dict(), state)
    if problems:
        raise CheckpointError(f"{source} does not fit {target}: {'; '.join(problems)}; "
                              "use the checkpoint's architecture and number of classes")
    module.load_state_dict(state, strict=True)


def _fit_problems(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[str]:
    # old BatchNorm files lack num_batches_tracked; torch fills it in, so it is not missing
    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - expected.keys())
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
              for k in sorted(expected.keys() & state.keys()) if state[k].shape != expected[k].shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            problems.append(f"{label} {len(items)} key(s) ({_abbrev(items)})")
    return problems


def _abbrev(items: list[str], first: int = 4) -> str:
    shown = ", ".join(items[:first])
    return shown + (f", ... +{len(items) - first} more" if len(items) > first else "")


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        kinds = sorted({type(v).__name__ for v in obj.values()})
        return f"a dict with keys {_abbrev([str(k) for k in obj])} of types {', '.join(kinds)}"
    return f"a {type(obj).__name__}"


def _summary(err: BaseException) -> str:
    """The exception's type and first sentence, on one line (torch's messages run long)."""
    text = str(err)
    inner = re.search(r"WeightsUnpickler error:(.*?)(?:Check the documentation|$)", text, re.S)
    words = " ".join((inner.group(1) if inner else text).split())
    return f"{type(err).__name__}: {words.split('. ')[0]}".rstrip(": ")
