"""The model zoo: published robust ImageNet checkpoints and the small models shipped inside.

This module is the zoo's catalogue and its files; it does not import torch, so listing
the zoo is instant. Turning a name into a model is :mod:`robust_transfer.models.sources`.

Three kinds of source models are known by name:

* published: the robust ImageNet ResNets of the robustness library (MadryLab) and of
  robust-models-transfer (Salman et al. 2020). They are large and never fetched
  unasked: :func:`fetch` finds them in the zoo folder (``$ROBUST_TRANSFER_ZOO``, default
  ``~/.cache/robust_transfer/zoo``) and downloads only with ``allow_download=True``.
* embedded: small models trained by ``robust-transfer pretrain``, committed under
  ``robust_transfer/zoo/`` as ``<name>.safetensors`` + ``<name>.json``.
* torchvision: torchvision's naturally trained ImageNet weights (``torchvision-resnet50``
  is ``ResNet50_Weights.IMAGENET1K_V1``), kept where torchvision keeps them (torch hub's
  ``checkpoints`` folder under ``$TORCH_HOME``) and fetched through torchvision's weights
  API, again only when asked.

Where the files live. robust-models-transfer's README linked an Azure blob
(``robustnessws4285631339.blob.core.windows.net/public-models/robust_imagenet/<file>``
with a signed token); that repository is gone and MadryLab now points to the Hugging Face
repository ``madrylab/robust-imagenet-models`` (MadryLab/robustness issue #125), whose
files keep the original names. The paper's three robustness-library models are on
Dropbox as linked from the robustness README; ``dl=1`` asks Dropbox for the file itself
instead of its preview page. No checksums are published for any of them, so ``sha256`` is
``None`` and a download is checked only for completeness.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust_transfer.errors import CheckpointError, UnknownNameError
from robust_transfer.models.metadata import checkpoint_paths, read_metadata
from robust_transfer.models.published import PublishedModel
from robust_transfer.models.zoo_timm import TIMM_ENTRIES
from robust_transfer.registry import Registry, unknown_name

if TYPE_CHECKING:
    from robust_transfer.hub import ByteProgress

ZOO_ENV = "ROBUST_TRANSFER_ZOO"
EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "zoo"
HF_REPO_PAGE = "https://huggingface.co/madrylab/robust-imagenet-models"
HF_FILE_URL = HF_REPO_PAGE + "/resolve/main/{file}"
ROBUSTNESS_PAGE = "https://github.com/MadryLab/robustness"


PUBLISHED: Registry[PublishedModel] = Registry("published zoo model")

# robust-models-transfer README, "Standard Accuracy of ... ImageNet Models" (top-1, %)
_L2_EPS = ("0", "0.01", "0.03", "0.05", "0.1", "0.25", "0.5", "1", "3", "5")
_LINF_EPS = ("0.5", "1.0", "2.0", "4.0", "8.0")  # in units of 1/255, as in the file names
_CLEAN_L2 = {
    "resnet18": (69.79, 69.90, 69.24, 69.15, 68.77, 67.43, 65.49, 62.32, 53.12, 45.59),
    "resnet50": (75.80, 75.68, 75.76, 75.59, 74.78, 74.14, 73.16, 70.43, 62.83, 56.13),
    "wide_resnet50_2": (76.97, 77.25, 77.26, 77.17, 76.74, 76.21, 75.11, 73.41, 66.90, 60.94),
}
_CLEAN_LINF = {
    "resnet18": (66.13, 63.46, 59.63, 52.49, 42.11),
    "resnet50": (73.73, 72.05, 69.10, 63.86, 54.53),
    "wide_resnet50_2": (75.82, 74.65, 72.35, 68.41, 60.82),
}
_TRANSFER_NOTE = "Salman et al. 2020 (robust-models-transfer); clean accuracy from its README"
# the paper's sources (robustness library README): name, Dropbox path, norm, eps label,
# clean %, robust % (the first of its two numbers at the training radius)
_PAPER_MODELS = (
    ("robustness-resnet50-l2-eps3", "knf4uimlqsi1yz8/imagenet_l2_3_0.pt", "l2", "3", 57.90, 35.16),
    ("robustness-resnet50-linf-eps4", "axfuary2w1cnyrg/imagenet_linf_4.pt", "linf", "4", 62.42, 33.58),
    ("robustness-resnet50-linf-eps8", "yxn15a9zklz3s8q/imagenet_linf_8.pt", "linf", "8", 47.91, 19.63),
)
_PAPER_NOTE = ("the paper's source model (MadryLab robustness library); accuracies from its "
               "README, robust at the training radius")


def _pixel_eps(norm: str, label: str) -> float:
    return float(label) / 255 if norm == "linf" else float(label)


def _fraction(percent: float) -> float:
    return round(percent / 100, 4)


def _label(norm: str, eps: str) -> str:
    return eps if norm == "l2" else f"{eps}/255"


def _register_grid() -> None:
    for norm, labels, table in (("l2", _L2_EPS, _CLEAN_L2), ("linf", _LINF_EPS, _CLEAN_LINF)):
        for arch, accs in table.items():
            for label, acc in zip(labels, accs, strict=True):
                _register_grid_model(arch, norm, label, acc)


def _register_grid_model(arch: str, norm: str, file_eps: str, clean_pct: float) -> None:
    file = f"{arch}_{norm}_eps{file_eps}.ckpt"
    eps = f"{float(file_eps):g}"  # "1.0" in Linf file names, "1" in ours
    name = f"{arch}-{norm}-eps{eps}"
    PUBLISHED.register(name, PublishedModel(
        name, arch, norm, _pixel_eps(norm, eps), _label(norm, eps), file,
        HF_FILE_URL.format(file=file), HF_REPO_PAGE, clean_acc=_fraction(clean_pct), note=_TRANSFER_NOTE))


def _register_paper_models() -> None:
    for name, dropbox, norm, label, clean, robust in _PAPER_MODELS:
        file = dropbox.split("/")[-1]
        PUBLISHED.register(name, PublishedModel(
            name, "resnet50", norm, _pixel_eps(norm, label), _label(norm, label), file,
            f"https://www.dropbox.com/s/{dropbox}?dl=1", ROBUSTNESS_PAGE,
            clean_acc=_fraction(clean), robust_acc=_fraction(robust), note=_PAPER_NOTE))


_register_grid()
_register_paper_models()
for _entry in TIMM_ENTRIES:  # ConvNeXt/Swin/ViT entries (RobustBench files)
    PUBLISHED.register(_entry.name, _entry)


@dataclass(frozen=True)
class TorchvisionModel:
    """A torchvision ImageNet model whose weights torchvision's weights API fetches.

    Attributes:
        name: zoo name, e.g. ``torchvision-resnet50``.
        arch: registered architecture.
        weights: the torchvision weights enum member, e.g. ``ResNet50_Weights.IMAGENET1K_V1``.
        file: the file name torch hub stores it under (``<name>-<sha256 prefix>.pth``).
        url: where torchvision downloads it from.
        clean_acc: torchvision's published ImageNet top-1 accuracy (fraction).
    """

    name: str
    arch: str
    weights: str
    file: str
    url: str
    clean_acc: float
    norm: str = "none"
    eps: float = 0.0
    source_dataset: str = "imagenet"
    num_classes: int = 1000
    input_size: int = 224

    @property
    def hash_prefix(self) -> str:
        """The sha256 prefix in the file name, which torch hub checks on download."""
        return self.file.rsplit("-", 1)[-1].split(".")[0]


TORCHVISION: Registry[TorchvisionModel] = Registry("torchvision zoo model")
TORCHVISION.register("torchvision-resnet50", TorchvisionModel(
    "torchvision-resnet50", "resnet50", "ResNet50_Weights.IMAGENET1K_V1", "resnet50-0676ba61.pth",
    "https://download.pytorch.org/models/resnet50-0676ba61.pth", 0.7613))


# --- where files are -------------------------------------------------------------------
def zoo_dir() -> Path:
    """The folder of downloaded published checkpoints: ``$ROBUST_TRANSFER_ZOO`` or the cache."""
    env = os.environ.get(ZOO_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "robust_transfer" / "zoo"


def embedded_models() -> list[dict[str, Any]]:
    """The models shipped in the package, with their metadata.

    Returns:
        One dict per ``<name>.json`` in :data:`EMBEDDED_DIR`: its metadata plus ``name``
        and ``path`` (the ``.safetensors`` file), sorted by name.

    Raises:
        CheckpointError: a shipped model's files are incomplete or unreadable.
    """
    if not EMBEDDED_DIR.is_dir():
        return []
    models = []
    for meta_path in sorted(EMBEDDED_DIR.glob("*.json")):
        weights, _ = checkpoint_paths(meta_path)
        models.append({**read_metadata(meta_path), "name": meta_path.stem, "path": str(weights)})
    return models


def torch_hub_checkpoints() -> Path:
    """Where torch hub (and so torchvision's weights API) keeps downloaded weights.

    The same folder as ``torch.hub.get_dir() / "checkpoints"`` (``$TORCH_HOME/hub``, else
    ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub``), computed without torch.
    """
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def zoo_names() -> list[str]:
    """Every zoo name: embedded models first, then the published and torchvision ones."""
    return [m["name"] for m in embedded_models()] + PUBLISHED.names() + TORCHVISION.names()


def unknown_zoo_name(name: str, hint: str = "") -> UnknownNameError:
    """The error for a name not in the zoo: close names first, then the whole zoo."""
    err = unknown_name("zoo model", name, zoo_names())
    return UnknownNameError(f"{err}{hint}") if hint else err


def get_published(name: str) -> PublishedModel:
    """The published model called ``name``.

    Raises:
        UnknownNameError: ``name`` is not a published model (the message lists the zoo).
    """
    if name not in PUBLISHED:
        raise unknown_zoo_name(name)
    return PUBLISHED.get(name)


def get_embedded(name: str) -> dict[str, Any] | None:
    """The shipped model called ``name`` (see :func:`embedded_models`), or ``None``."""
    return next((m for m in embedded_models() if m["name"] == name), None)


def zoo_kind(name: str) -> str | None:
    """``embedded``, ``published`` or ``torchvision`` for a zoo name; ``None`` otherwise."""
    if name in PUBLISHED:
        return "published"
    if name in TORCHVISION:
        return "torchvision"
    return "embedded" if get_embedded(name) is not None else None


# --- fetching --------------------------------------------------------------------------
def fetch(name: str, dest_dir: str | os.PathLike | None = None, allow_download: bool = False,
          progress: bool | ByteProgress = False) -> Path:
    """The local file of a zoo model, downloading a published one only when allowed.

    Args:
        name: a zoo name (embedded, published or torchvision).
        dest_dir: folder of published checkpoints (default: :func:`zoo_dir`; torchvision
            weights always go to torch hub's folder, :func:`torch_hub_checkpoints`).
        allow_download: download a missing published or torchvision file.
        progress: a download's progress (see :func:`robust_transfer.hub.download`).

    Returns:
        The checkpoint's path.

    Raises:
        UnknownNameError: ``name`` is not in the zoo.
        CheckpointError: the file is absent and downloading was not allowed or failed, or
            its checksum does not match.
    """
    embedded = get_embedded(name)
    if embedded is not None:
        return Path(embedded["path"])
    if name in TORCHVISION:
        return _fetch_torchvision(TORCHVISION.get(name), allow_download)
    entry = get_published(name)
    folder = Path(dest_dir) if dest_dir is not None else zoo_dir()
    target = folder / entry.file
    if target.is_file():
        return target
    if not allow_download:
        raise CheckpointError(missing_message(name, folder))
    return download(entry.url, target, entry.sha256, progress=progress)


def missing_message(name: str, folder: str | os.PathLike | None = None) -> str:
    """What to do about a published or torchvision file that is not on this machine."""
    if name in TORCHVISION:
        entry = TORCHVISION.get(name)
        return (f"{entry.file} is not in {torch_hub_checkpoints()} (torch hub's cache, "
                f"$TORCH_HOME): run 'robust-transfer zoo fetch {name} --download' (torchvision's "
                f"{entry.weights}), or put the file from {entry.url} there")
    published = get_published(name)
    where = Path(folder) if folder is not None else zoo_dir()
    return (f"{published.file} is not in {where}: download it from {published.url} into that "
            f"folder, or run 'robust-transfer zoo fetch {name} --download'")


def _fetch_torchvision(entry: TorchvisionModel, allow_download: bool) -> Path:
    target = torch_hub_checkpoints() / entry.file
    if target.is_file():
        return target
    if not allow_download:
        raise CheckpointError(missing_message(entry.name))
    # torchvision's weights API downloads through torch hub: a temporary file renamed
    # once complete, the sha256 prefix in the file name checked
    from torchvision.models import get_weight

    try:
        get_weight(entry.weights).get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as err:  # URLError, hash mismatch, unpickling: all one message
        words = " ".join(str(err).split())[:200]
        raise CheckpointError(f"cannot download {entry.url} ({type(err).__name__}: {words}); "
                              f"put {entry.file} into {target.parent} by hand") from None
    return target


def download(url: str, target: str | os.PathLike, sha256: str | None = None,
             timeout: float = 60.0, progress: bool | ByteProgress = False) -> Path:
    """Download ``url`` to ``target``: resumable, checked against ``sha256`` if given.

    See :func:`robust_transfer.hub.download` (Hugging Face hub URLs through
    ``huggingface_hub``, others through a resumable HTTP download).

    Args:
        url: what to fetch.
        target: the final path; it appears only once the file is complete and verified.
        sha256: expected hex checksum, or ``None`` when none is known.
        timeout: seconds to wait for the server at each step.
        progress: ``True`` for a bar on stderr, or a ``progress(done, total)`` callable.

    Returns:
        ``target`` as a :class:`Path`.

    Raises:
        CheckpointError: the server cannot be reached, the download was interrupted (run
            again to resume) or the checksum differs.
    """
    from robust_transfer import hub

    return hub.download(url, target, sha256, timeout=timeout, progress=progress)


# --- listing ---------------------------------------------------------------------------
def eps_label(norm: str | None, eps: float | None) -> str:
    """A radius as people write it: ``3`` for L2, ``4/255`` for Linf, ``-`` when unknown."""
    if eps is None:
        return "-"
    return f"{eps * 255:g}/255" if norm == "linf" else f"{eps:g}"


def zoo_listing() -> list[dict[str, Any]]:
    """One row per zoo model for tables: embedded first, then published, then torchvision.

    Returns:
        Dicts with ``name``, ``kind`` (``embedded``/``published``/``torchvision``), ``arch``, ``norm``,
        ``eps`` (label), ``source_dataset``, ``clean_acc``, ``robust_acc`` and ``local``
        (whether the file is on this machine).
    """
    rows = [{"name": m["name"], "kind": "embedded", "arch": m["arch"], "norm": m.get("norm") or "-",
             "eps": eps_label(m.get("norm"), m.get("eps")), "source_dataset": m.get("source_dataset"),
             "clean_acc": m.get("clean_acc"), "robust_acc": m.get("robust_acc"), "local": True}
            for m in embedded_models()]
    folder = zoo_dir()
    for name in PUBLISHED.names():
        e = PUBLISHED.get(name)
        rows.append({"name": name, "kind": "published", "arch": e.arch, "norm": e.norm,
                     "eps": e.eps_label, "source_dataset": e.source_dataset, "clean_acc": e.clean_acc,
                     "robust_acc": e.robust_acc, "local": (folder / e.file).is_file()})
    hub = torch_hub_checkpoints()
    for name in TORCHVISION.names():
        t = TORCHVISION.get(name)
        rows.append({"name": name, "kind": "torchvision", "arch": t.arch, "norm": "-", "eps": "0",
                     "source_dataset": t.source_dataset, "clean_acc": t.clean_acc,
                     "robust_acc": None, "local": (hub / t.file).is_file()})
    return rows
