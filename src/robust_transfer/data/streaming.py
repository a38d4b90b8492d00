"""Streaming image folders for ImageNet-scale source training.

``folder:PATH`` (also spelled ``imagefolder:PATH``) reads ``PATH/train/<class>/*`` and
``PATH/test/<class>/*`` (or ``val/``, ImageNet's name) from disk with worker processes,
never holding the dataset in memory: source training (``pretrain``) streams every folder
dataset this way; fine-tuning and influence read the same folder into memory
(:func:`robust_transfer.data.datasets.load_dataset`). Training crops are RandomResizedCrop + flip + colour
jitter 0.1 (the robustness library's ImageNet policy, without its PCA lighting); test
images are resized to size/0.875 and centre-cropped. Tensors are pixels in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from robust_transfer.data.datasets import dataset_info, folder_path, folder_split_dir
from robust_transfer.data.images import open_image
from robust_transfer.errors import DatasetError

PREFIX = "imagefolder:"  # kept for callers; folder_path() accepts both spellings


def is_streaming(name: str) -> bool:
    """Whether source training streams ``name`` from disk: any folder dataset."""
    return folder_path(name) is not None


@dataclass
class StreamingSplit:
    """A loader over one split, with the ``set_epoch``/``len`` interface :func:`fit` uses."""

    loader: DataLoader
    classes: list[str]

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)
        else:
            self.loader.generator.manual_seed(self.seed_base + epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        try:
            yield from self.loader
        except DatasetError as err:  # from a loader worker: its message carries a traceback
            raise DatasetError(_last_line(str(err))) from None

    @property
    def num_images(self) -> int:
        return len(self.loader.dataset)  # type: ignore[arg-type]  # an ImageFolder: sized

    seed_base: int = 0


def _last_line(message: str) -> str:
    """The error's own message out of a DataLoader worker's wrapped traceback."""
    line = message.strip().splitlines()[-1] if message.strip() else message
    return line.split("DatasetError: ", 1)[-1]


def _folder_class():
    from torchvision.datasets import ImageFolder

    class GuardedFolder(ImageFolder):
        """An ImageFolder whose class indices are the training split's (a test split
        lacking a class would otherwise shift every label after it), decoding every image
        through :func:`~robust_transfer.data.images.open_image`."""

        def __init__(self, root, classes: list[str], transform) -> None:
            self.fixed_classes = classes
            super().__init__(str(root), transform=transform, loader=open_image)

        def find_classes(self, directory):
            return self.fixed_classes, {c: i for i, c in enumerate(self.fixed_classes)}

    return GuardedFolder


def _guarded_folder(root, classes: list[str], transform):
    return _folder_class()(root, classes, transform)


def _transform(size: int, train: bool, augment: bool):
    from torchvision import transforms as T

    if train and augment:
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                          T.ColorJitter(0.1, 0.1, 0.1), T.ToTensor()])
    return T.Compose([T.Resize(round(size / 0.875)), T.CenterCrop(size), T.ToTensor()])


def streaming_split(name: str, split: str, size: int, batch_size: int, augment: bool = True,
                    seed: int = 0, workers: int = 4, distributed: bool | None = None) -> StreamingSplit:
    """A shuffled (train) or ordered (test) loader over ``folder:PATH``.

    Under ``torch.distributed`` the training split is sharded with a DistributedSampler;
    the test split is read whole by the rank that evaluates.
    """
    root = folder_path(name)
    if root is None or not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    train = split == "train"
    split_dir = folder_split_dir(root, split)
    try:  # decoded through the guarded loader, labelled by the training split's classes
        classes = list(dataset_info(name).classes)
        ds = _guarded_folder(split_dir, classes, _transform(size, train, augment))
    except FileNotFoundError as err:
        raise DatasetError(f"{root}/{split}: {err}") from None
    if distributed is None:
        distributed = train and dist.is_available() and dist.is_initialized()
    gen = torch.Generator().manual_seed(seed)
    sampler: DistributedSampler | None = DistributedSampler(ds, shuffle=True, seed=seed) if distributed else None
    loader = DataLoader(ds, batch_size=batch_size, shuffle=train and sampler is None,
                        sampler=sampler, num_workers=workers, generator=gen,
                        pin_memory=torch.cuda.is_available(), drop_last=False,
                        persistent_workers=workers > 0)
    return StreamingSplit(loader, list(ds.classes), seed_base=seed * 100003)
