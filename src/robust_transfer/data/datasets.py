"""Dataset registry: every target and source dataset as uint8 image arrays in memory.

A dataset is loaded as :class:`ImageArrays`: ``images`` uint8 ``[N, C, H, W]`` and
``labels`` int64 ``[N]``. The small targets of the paper (CIFAR, SVHN, MNIST-likes) fit in
memory, and batched tensor transforms on them are much faster on a CPU than per-image PIL
pipelines. ImageNet-scale source data is out of scope here (see README).

Data roots: the ``root`` argument, else ``$ROBUST_TRANSFER_DATA``, else
``~/.cache/robust_transfer/data``. Nothing is downloaded unless ``download=True``.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from robust_transfer.data.images import IMAGE_EXTS, image_channels, is_image_file, read_image
from robust_transfer.errors import ConfigError, DatasetError
from robust_transfer.registry import Registry

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "test")
# one kind of dataset, two spellings: "folder:" is the documented one, "imagefolder:" the
# older name for source training, kept working
FOLDER_PREFIXES = ("folder:", "imagefolder:")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: its classes, channels and native image size."""

    name: str
    classes: tuple[str, ...]
    channels: int
    size: int
    grayscale_like: bool = False  # MNIST-likes: the paper used no augmentation on them
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class ImageArrays:
    """A dataset split held in memory.

    Attributes:
        images: uint8 tensor ``[N, C, H, W]``.
        labels: int64 tensor ``[N]``.
        info: the dataset's :class:`DatasetInfo`.
        split: ``"train"`` or ``"test"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo
    split: str
    source: str = field(default="")  # where the files came from, for provenance

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: np.ndarray | torch.Tensor) -> ImageArrays:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageArrays(self.images[idx], self.labels[idx], self.info, self.split, self.source)


@dataclass(frozen=True)
class DatasetEntry:
    info: DatasetInfo
    load: Callable[[DatasetInfo, str, Path, bool], ImageArrays]
    expected_files: Callable[[Path], list[Path]]


DATASETS: Registry[DatasetEntry] = Registry("dataset")

_MNIST_CLASSES = tuple(str(i) for i in range(10))
_FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where datasets live: ``root``, else ``$ROBUST_TRANSFER_DATA``, else the user cache."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("ROBUST_TRANSFER_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "robust_transfer" / "data"


def folder_path(name: str) -> Path | None:
    """The folder of ``folder:PATH`` (or its alias ``imagefolder:PATH``); None otherwise."""
    for prefix in FOLDER_PREFIXES:
        if name.startswith(prefix):
            return Path(name[len(prefix):]).expanduser()
    return None


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered name or of ``folder:PATH``."""
    folder = folder_path(name)
    if folder is not None:
        return _folder_info(folder, name)
    return DATASETS.get(name).info


def dataset_names() -> list[str]:
    return DATASETS.names() + ["folder:PATH"]


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
) -> ImageArrays:
    """Load one split of a dataset into memory.

    Args:
        name: a registered name (see :func:`dataset_names`) or ``folder:PATH``
            (``imagefolder:PATH`` is the same).
        split: ``"train"`` or ``"test"``.
        root: data root (default: :func:`data_root`).
        download: fetch missing files from the internet (torchvision datasets only).

    Raises:
        UnknownNameError: the name is not registered.
        DatasetError: the files are missing; the message names them and where.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
    folder = folder_path(name)
    if folder is not None:
        return _load_folder(folder, split, name)
    entry = DATASETS.get(name)
    base = data_root(root)
    try:
        return entry.load(entry.info, split, base, download)
    except DatasetError:
        raise
    except (RuntimeError, FileNotFoundError, OSError) as err:
        expected = ", ".join(str(p) for p in entry.expected_files(base))
        if download:  # e.g. no internet: say why the download failed
            first = (str(err).splitlines() or [type(err).__name__])[0]
            problem = f"could not be downloaded ({type(err).__name__}: {first})"
            hint = ""
        else:
            problem = "missing or corrupt"
            hint = f" when online run `robust-transfer data fetch {name}` (Python: download=True), or"
        raise DatasetError(
            f"dataset '{name}' ({split}) {problem}: expected {expected};{hint} copy the files "
            f"there, or point --data-root / ROBUST_TRANSFER_DATA at a folder holding them"
        ) from err


# --- torchvision datasets -------------------------------------------------------------


def _to_nchw(data: np.ndarray | torch.Tensor, layout: str) -> torch.Tensor:
    if isinstance(data, torch.Tensor):  # torchvision's MNIST-likes hold tensors
        x = data.to(torch.uint8).clone()
    else:
        x = torch.as_tensor(np.array(data, dtype=np.uint8, copy=True))
    if layout == "NHW":
        return x.unsqueeze(1).contiguous()
    if layout == "NHWC":
        return x.permute(0, 3, 1, 2).contiguous()
    return x.contiguous()


def _torchvision_loader(cls_name: str, layout: str, split_kw: str = "train") -> Callable:
    def load(info: DatasetInfo, split: str, root: Path, download: bool) -> ImageArrays:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        if split_kw == "train":
            ds = cls(str(root), train=(split == "train"), download=download)
        else:  # SVHN names its splits
            ds = cls(str(root), split=split, download=download)
        labels = getattr(ds, "targets", None)
        if labels is None:
            labels = ds.labels
        images = _to_nchw(ds.data, layout)
        return ImageArrays(images, torch.as_tensor(np.asarray(labels), dtype=torch.long),
                           info, split, source=str(root))

    return load


def _mnist_files(folder: str, gz: bool = False) -> Callable[[Path], list[Path]]:
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    return lambda root: [root / folder / "raw" / (n + (".gz" if gz else "")) for n in names]


def _files_in(folder: str, names: list[str]) -> Callable[[Path], list[Path]]:
    # every file torchvision checks (it refuses the set if any is missing or has a wrong md5)
    return lambda root: [root / folder / n for n in names]


def _register_torchvision() -> None:
    specs = [
        ("mnist", "MNIST", _MNIST_CLASSES, 1, 28, True, "NHW", "train",
         _mnist_files("MNIST")),
        ("kmnist", "KMNIST", _KMNIST_CLASSES, 1, 28, True, "NHW", "train",
         _mnist_files("KMNIST")),
        ("cifar10", "CIFAR10", _CIFAR10_CLASSES, 3, 32, False, "NHWC", "train",
         _files_in("cifar-10-batches-py",
                   [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])),
        ("cifar100", "CIFAR100", tuple(f"class_{i}" for i in range(100)), 3, 32, False, "NHWC",
         "train", _files_in("cifar-100-python", ["train", "test", "meta"])),
        ("svhn", "SVHN", _MNIST_CLASSES, 3, 32, False, "NCHW", "split",
         lambda r: [r / "train_32x32.mat", r / "test_32x32.mat"]),
    ]
    for name, cls, classes, ch, size, gray, layout, split_kw, files in specs:
        info = DatasetInfo(name, classes, ch, size, gray, f"torchvision.datasets.{cls}")
        DATASETS.register(name, DatasetEntry(info, _torchvision_loader(cls, layout, split_kw), files))


# --- Fashion-MNIST: torchvision layout, or the Debian package's gzipped IDX files ------


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file; re-download it")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated ({body.size} of {int(np.prod(dims))} values)")
    return body.reshape(dims)


def _idx_folder(root: Path) -> Path | None:
    """A folder holding the four Fashion-MNIST IDX files (plain or .gz), if any."""
    candidates = [root / "FashionMNIST" / "raw", root / "fashion-mnist", DEBIAN_FMNIST]
    for folder in candidates:
        if all(_idx_path(folder, n) for n in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
            return folder
    return None


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_fmnist(info: DatasetInfo, split: str, root: Path, download: bool) -> ImageArrays:
    folder = _idx_folder(root)
    if folder is None:
        if not download:
            raise FileNotFoundError(root)
        import torchvision.datasets as tvd

        tvd.FashionMNIST(str(root), train=True, download=True)
        folder = root / "FashionMNIST" / "raw"
    prefix = "train" if split == "train" else "t10k"
    paths = [_idx_path(folder, f"{prefix}-{kind}-idx{dims}-ubyte") for kind, dims in (("images", 3), ("labels", 1))]
    if paths[0] is None or paths[1] is None:
        raise DatasetError(f"{folder} lacks the Fashion-MNIST {split} IDX files "
                           f"({prefix}-images-idx3-ubyte, {prefix}-labels-idx1-ubyte); re-download them")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    return ImageArrays(_to_nchw(images, "NHW"), torch.as_tensor(labels.astype(np.int64)),
                       info, split, source=str(folder))


DATASETS.register("fmnist", DatasetEntry(
    DatasetInfo("fmnist", _FMNIST_CLASSES, 1, 28, True,
                "Fashion-MNIST; found by itself in /usr/share/datasets/fashion-mnist "
                "(Debian package dataset-fashion-mnist)"),
    _load_fmnist,
    lambda r: [*(_mnist_files("FashionMNIST")(r)), DEBIAN_FMNIST / "train-images-idx3-ubyte.gz"],
))


# --- scikit-learn's bundled digits ----------------------------------------------------


def digits_split(n: int) -> np.ndarray:
    """The fixed digits train/test split: every 4th image (index % 4 == 3) is a test image.

    1,797 images -> 1,348 train, 449 test. Independent of any library's random generator.
    """
    return np.arange(n) % 4 == 3


def _load_digits(info: DatasetInfo, split: str, root: Path, download: bool) -> ImageArrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # values are 0..16; scale to 0..255 so every dataset is uint8 in the same range
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    is_test = digits_split(len(images))
    keep = is_test if split == "test" else ~is_test
    return ImageArrays(_to_nchw(images[keep], "NHW"),
                       torch.as_tensor(bunch.target[keep].astype(np.int64)),
                       info, split, source="sklearn.datasets.load_digits")


DATASETS.register("digits", DatasetEntry(
    DatasetInfo("digits", _MNIST_CLASSES, 1, 8, True,
                "scikit-learn's bundled 8x8 digits; test = index % 4 == 3"),
    _load_digits,
    lambda r: [],
))

_register_torchvision()


# --- folder:PATH ----------------------------------------------------------------------

_FOLDER_SIZE = 32  # images of a user's folder are resized to this square size on load


def folder_split_dir(path: Path, split: str) -> Path:
    """``PATH/train`` for the training split; ``PATH/test``, else ``PATH/val``, for the test split.

    Raises:
        DatasetError: the split's folder is missing.
    """
    found = _split_dir(path, split)
    if found is None:
        names = ["train"] if split == "train" else ["test", "val"]
        raise DatasetError(
            f"folder dataset {path} has no {' or '.join(n + '/' for n in names)} subfolder; "
            f"lay it out as {path}/train/<class>/*.png and {path}/test/<class>/*.png (or val/)")
    return found


def _split_dir(path: Path, split: str) -> Path | None:
    names = ["train"] if split == "train" else ["test", "val"]
    return next((path / n for n in names if (path / n).is_dir()), None)


def _folder_classes(split_dir: Path) -> list[str]:
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise DatasetError(f"{split_dir} has no class subfolders (expected {split_dir}/<class>/*.png)")
    return classes


def _images_in(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if is_image_file(p)] if folder.is_dir() else []


def _check_folder_classes(path: Path, train_dir: Path, classes: list[str]) -> None:
    """Refuse class lists a classifier cannot learn or be scored on: one class, an empty
    training class, or test classes that training never sees."""
    if len(classes) < 2:
        raise DatasetError(f"{train_dir} has one class ({classes[0]}); a classifier needs at "
                           "least two class subfolders")
    empty = [c for c in classes if not any(map(is_image_file, (train_dir / c).iterdir()))]
    if empty:
        raise DatasetError(f"{train_dir / empty[0]} has no images ({len(empty)} empty training "
                           f"class(es): {', '.join(empty[:5])}); add images or remove the folder")
    test_dir = _split_dir(path, "test")
    unseen = sorted(set(_folder_classes(test_dir)) - set(classes)) if test_dir else []
    if unseen:
        raise DatasetError(f"{test_dir} has class(es) {', '.join(unseen[:5])} that {train_dir} "
                           "lacks: a model trained there cannot predict them; add them to "
                           "train/ or remove them from the test split")


def _folder_info(path: Path, name: str) -> DatasetInfo:
    if not path.is_dir():
        raise DatasetError(f"folder dataset {path} does not exist")
    train_dir = folder_split_dir(path, "train")
    classes = _folder_classes(train_dir)
    first = next((p for c in classes for p in _images_in(train_dir / c)), None)
    if first is None:
        raise DatasetError(f"no images under {train_dir}/<class>/ (extensions: "
                           f"{', '.join(sorted(IMAGE_EXTS))})")
    _check_folder_classes(path, train_dir, classes)
    channels = image_channels(first)
    return DatasetInfo(name, tuple(classes), channels, _FOLDER_SIZE, channels == 1,
                       f"images under {path}, resized to {_FOLDER_SIZE}px")


def _load_folder(path: Path, split: str, name: str) -> ImageArrays:
    info = _folder_info(path, name)
    split_dir = folder_split_dir(path, split)
    images, labels = [], []
    for label, cls in enumerate(info.classes):
        for p in _images_in(split_dir / cls):
            images.append(read_image(p, info.channels, _FOLDER_SIZE))
            labels.append(label)
    if not images:
        raise DatasetError(f"no images found under {split_dir}")
    return ImageArrays(torch.as_tensor(np.stack(images)), torch.as_tensor(labels, dtype=torch.long),
                       info, split, source=str(split_dir))


def dataset_available(name: str, root: str | os.PathLike | None = None) -> bool:
    """Whether the files of a registered dataset are on this machine (nothing is read)."""
    entry = DATASETS.get(name)
    base = data_root(root)
    if name == "fmnist":
        return _idx_folder(base) is not None
    return all(p.exists() for p in entry.expected_files(base))
