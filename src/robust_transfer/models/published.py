"""What the zoo knows about a published source model: one record, shared by the catalogue
(:mod:`.zoo`) and its timm entries (:mod:`.zoo_timm`). Imports nothing heavy."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PublishedModel:
    """A published ImageNet source model and where to get it.

    Attributes:
        name: zoo name, e.g. ``resnet50-l2-eps3``.
        arch: registered architecture.
        norm: threat model of adversarial training, ``l2`` or ``linf``.
        eps: training radius in pixel space ([0, 1] inputs); Linf 4/255 is 0.0157.
        eps_label: the radius as published (``3``, ``4/255``).
        file: file name in the zoo folder, as published.
        url: direct download URL.
        page: where the release is described.
        sha256: checksum of the file where one is known.
        clean_acc: published ImageNet top-1 accuracy (fraction).
        robust_acc: published robust accuracy at the training radius (fraction), if any.
        note: where the numbers come from.
    """

    name: str
    arch: str
    norm: str
    eps: float
    eps_label: str
    file: str
    url: str
    page: str
    sha256: str | None = None
    clean_acc: float | None = None
    robust_acc: float | None = None
    source_dataset: str = "imagenet"
    num_classes: int = 1000
    note: str = ""

    @property
    def training(self) -> str:
        return "natural" if self.eps == 0 else "pgd"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "training": self.training}
