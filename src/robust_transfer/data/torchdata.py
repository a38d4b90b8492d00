"""Any torch data as :class:`ImageArrays`: the adapter at the Python API's boundary.

Fine-tuning, evaluation and influence work on uint8 images held in memory. A user's
``torch.utils.data.Dataset`` (map-style or iterable) or ``DataLoader`` of
``(image, label)`` is read once and materialised:

* images may be PIL images (any mode; grayscale stays one channel, others become RGB),
  uint8 arrays/tensors, or float arrays/tensors in [0, 1]; layout CHW or HWC (tensors
  are read as CHW and arrays as HWC when both would fit, as torchvision and PIL do);
  a DataLoader's batches add a leading batch dimension;
* labels are ints (Python, numpy or 0-d tensors).

Normalised floats (e.g. after ``transforms.Normalize``) are refused: normalisation lives
inside the model. Images of different sizes are refused: add a ``Resize`` to the dataset.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robust_transfer.data.datasets import DatasetInfo, ImageArrays
from robust_transfer.errors import DatasetError

_TOL = 1e-4  # float pixels this far outside [0, 1] still count as in range (rounding)


def is_torch_data(obj: Any) -> bool:
    """Whether ``obj`` is a torch ``Dataset`` or ``DataLoader`` (not our ImageArrays)."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    return isinstance(obj, (Dataset, DataLoader, IterableDataset))


def is_image_data(obj: Any) -> bool:
    """ImageArrays or torch data: what :func:`model_loader` turns into model batches."""
    return isinstance(obj, ImageArrays) or is_torch_data(obj)


def as_image_arrays(data: Any, *, name: str | None = None, split: str = "train",
                    classes: tuple[str, ...] | None = None,
                    grayscale_like: bool | None = None) -> ImageArrays:
    """Materialise a torch Dataset or DataLoader of ``(image, label)`` as uint8 arrays.

    Args:
        data: an :class:`ImageArrays` (returned as it is), a ``Dataset`` or a ``DataLoader``.
        name: the dataset's name (seeds subsets; default ``torch:<class name>``).
        split: ``"train"`` or ``"test"``.
        classes: class names; default the dataset's ``classes`` attribute, else
            ``"0" .. str(max label)``.
        grayscale_like: skip the paper's colour augmentation (default: one channel).

    Returns:
        ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``.

    Raises:
        DatasetError: the items are not ``(image, label)`` pairs, an image is not in a
            supported form, images differ in size, or the data is empty.
    """
    if isinstance(data, ImageArrays):
        return data
    images, labels = _collect(data)
    base = _base_dataset(data)
    classes = tuple(classes or getattr(base, "classes", None) or
                    (str(i) for i in range(int(labels.max()) + 1)))
    if int(labels.min()) < 0 or int(labels.max()) >= len(classes):
        raise DatasetError(f"labels run {int(labels.min())}..{int(labels.max())} but there are "
                           f"{len(classes)} classes; labels must be 0..{len(classes) - 1}")
    channels, height, width = images.shape[1:]
    info = DatasetInfo(name or f"torch:{type(base).__name__}", classes, channels,
                       max(height, width), channels == 1 if grayscale_like is None else grayscale_like,
                       f"materialised from {type(data).__name__}")
    return ImageArrays(images, labels, info, split, source=info.description)


def as_image_arrays_pair(train: Any, test: Any) -> tuple[ImageArrays, ImageArrays]:
    """Both splits as :class:`ImageArrays` with the same name and classes.

    ImageArrays pass through untouched; torch data is materialised, the test split
    taking the training split's name and classes.
    """
    train = as_image_arrays(train, split="train")
    test = as_image_arrays(test, name=train.info.name, split="test", classes=train.info.classes,
                           grayscale_like=train.info.grayscale_like)
    return train, test


def _base_dataset(data: Any) -> Any:
    return getattr(data, "dataset", data)  # a DataLoader's dataset


def _collect(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.utils.data import DataLoader

    batched = isinstance(data, DataLoader) and data.batch_size is not None
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        for i, item in enumerate(_items(data)):
            image, label = _pair(item, i, data)
            images.append(_to_uint8(image, i, batched))
            labels.append(_to_labels(label, i, batched))
    except TypeError as err:  # e.g. default_collate given PIL images
        if not batched:
            raise
        raise DatasetError(f"the DataLoader cannot batch these items ({' '.join(str(err).split())[:160]}); "
                           "pass its Dataset instead") from None
    if not images:
        raise DatasetError(f"{type(data).__name__} yielded no items")
    _check_sizes(images)
    return torch.cat(images) if batched else torch.stack(images), torch.cat(labels)


def _items(data: Any):
    from torch.utils.data import DataLoader, IterableDataset

    if isinstance(data, (DataLoader, IterableDataset)) or not (
            hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return iter(data)
    return (data[i] for i in range(len(data)))  # map-style: by index, as a sampler would


def _pair(item: Any, index: int, data: Any) -> tuple[Any, Any]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    what = (f"a dict with keys {sorted(item)[:4]}" if isinstance(item, dict)
            else f"a {type(item).__name__}" + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""))
    raise DatasetError(f"item {index} of {type(data).__name__} is {what}, not an (image, label) "
                       "pair; wrap the dataset so that it returns (image, label)")


def _to_uint8(image: Any, index: int, batched: bool) -> torch.Tensor:
    """One image as uint8 ``[C, H, W]`` (or a batch as ``[B, C, H, W]``)."""
    if _is_pil(image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        x, numpy_layout = torch.from_numpy(np.array(image, copy=True)), True
    elif isinstance(image, torch.Tensor):
        x, numpy_layout = image.detach().cpu(), False
    else:
        raise DatasetError(f"image {index} is a {type(image).__name__}; expected a PIL image, "
                           "a numpy array or a tensor")
    x = _pixels_uint8(x, index)
    return _to_chw(x, index, batched, numpy_layout)


def _is_pil(image: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(image, Image.Image)


def _from_pil(image: Any) -> torch.Tensor:
    if image.mode not in ("L", "RGB"):
        image = image.convert("L" if image.mode in ("1", "I", "I;16", "F") else "RGB")
    arr = np.array(image, dtype=np.uint8)  # a writable copy
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _pixels_uint8(x: torch.Tensor, index: int) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x
    if x.is_floating_point():
        lo, hi = float(x.min()), float(x.max())
        if lo < -_TOL or hi > 1 + _TOL:
            raise DatasetError(f"image {index} has float values in [{lo:.3g}, {hi:.3g}]; float "
                               "images must lie in [0, 1] (drop any Normalize transform: "
                               "normalisation lives inside the model)")
        return (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if x.dtype != torch.bool and not x.is_complex():  # other integer types
        if int(x.min()) < 0 or int(x.max()) > 255:
            raise DatasetError(f"image {index} has integer values outside 0..255")
        return x.to(torch.uint8)
    raise DatasetError(f"image {index} has dtype {x.dtype}; expected uint8 or float in [0, 1]")


def _to_chw(x: torch.Tensor, index: int, batched: bool, numpy_layout: bool) -> torch.Tensor:
    dims = x.dim() - (1 if batched else 0)
    if dims == 2:  # grayscale H x W
        x = x.unsqueeze(-3)
    elif dims == 3:
        first, last = x.shape[-3], x.shape[-1]
        chw, hwc = first in (1, 3), last in (1, 3, 4)
        if hwc and (numpy_layout or not chw):
            x = x.movedim(-1, -3)
            if x.shape[-3] == 4:  # RGBA: drop alpha
                x = x[..., :3, :, :]
        elif not chw:
            raise DatasetError(f"image {index} has shape {tuple(x.shape)}; expected [C, H, W] "
                               "or [H, W, C] with 1 or 3 channels")
    else:
        kind = "a batch of images [B, C, H, W]" if batched else "an image [C, H, W], [H, W, C] or [H, W]"
        raise DatasetError(f"item {index} has shape {tuple(x.shape)}; expected {kind}")
    return x.contiguous()


def _to_labels(label: Any, index: int, batched: bool) -> torch.Tensor:
    t = torch.as_tensor(label)
    if t.is_floating_point() or t.dim() != (1 if batched else 0):
        raise DatasetError(f"label {index} is {label!r:.60}; expected an integer class index "
                           "(not one-hot or soft labels)")
    return t.reshape(-1).to(torch.int64)


def _check_sizes(images: list[torch.Tensor]) -> None:
    shapes = {tuple(t.shape[-3:]) for t in images}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise DatasetError(f"images differ in shape ({'x'.join(map(str, a))} and "
                           f"{'x'.join(map(str, b))}, channels x height x width); add a Resize "
                           "(and a fixed colour mode) to the dataset")


def model_loader(data: Any, model: torch.nn.Module, batch_size: int = 256):
    """Batches of model inputs from ImageArrays or torch data, for evaluation and attacks.

    Images are resized and channel-matched to the model (``model.input_size`` and
    ``model.channels`` where it has them, else kept as they are), pixels in [0, 1].
    """
    from robust_transfer.data.loader import TensorLoader
    from robust_transfer.data.transforms import InputPolicy

    arrays = as_image_arrays(data, split="test")
    channels = getattr(model, "channels", arrays.info.channels)
    size = getattr(model, "input_size", arrays.info.size)
    return TensorLoader(arrays.images, arrays.labels, batch_size,
                        transform=InputPolicy(channels, size).prepare)
