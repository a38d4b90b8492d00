"""Published robust ImageNet models of newer architectures (ConvNeXt, Swin, ViT).

The strongest ImageNet Linf (eps 4/255) entries of RobustBench that are plain timm
architectures, or timm architectures with a convolutional stem:

* Liu et al. 2023, "A Comprehensive Study on Robustness of Image Classification Models:
  Benchmarking and Rethinking" (arXiv 2302.14301): ConvNeXt-B/L, Swin-B/L.
* Singh, Croce, Hein 2023, "Revisiting Adversarial Training for ImageNet" (NeurIPS 2023,
  arXiv 2303.01870): ConvNeXt-T/S/B/L and ViT-S/B with ConvStem.

(RobustBench lists no ViT-B from Liu et al.; the ViT-B here is Singh et al.'s.)

Where each fact comes from (RobustBench, github.com/RobustBench/robustbench, commit
78fcc9e, read with the fetch tool):

* architectures and file ids: ``robustbench/model_zoo/imagenet.py`` (``linf`` dict:
  ``timm.create_model('convnext_base' | 'convnext_large' | 'swin_base_patch4_window7_224'
  | 'swin_large_patch4_window7_224')`` wrapped in ``normalize_model`` with the ImageNet
  mean/std; ``get_convstem_models(...)`` for Singh et al.; ``gdrive_id`` of each file;
  ``preprocessing: 'BicubicRes256Crop224'``).
* ConvStem layers and their normalisation: see :mod:`robust_transfer.models.convstem`.
* file format: ``robustbench/utils.py`` ``load_model``: ``torch.load`` of
  ``<model_dir>/imagenet/Linf/<name>.pt``; the state dict is ``checkpoint['state_dict']``
  or the checkpoint itself, with ``module.`` and ``model.`` prefixes removed; Swin files
  are in the layout of timm < 0.9 and go through timm's
  ``swin_transformer.checkpoint_filter_fn``; for Liu et al.'s models the normaliser is
  not in the file (RobustBench adds it).
* accuracies (ImageNet val 5,000-image subset, AutoAttack at Linf 4/255):
  ``model_info/imagenet/Linf/<name>.json`` (``clean_acc``, ``autoattack_acc``).

The files are on Google Drive (RobustBench downloads them with gdown). The direct URL
below is Drive's download endpoint for a file id with the large-file confirmation
pre-set; Google changes this endpoint from time to time and it could not be checked from
this offline machine. If it returns a web page, :func:`robust_transfer.hub.download`
says so; then download with ``gdown <id>`` or from the Drive page and put the file, named
as in ``file``, into the zoo folder. No checksums are published: ``sha256`` is ``None``.

Loading never unpickles code: ``torch.load(weights_only=True)``. Whether every file is a
pure tensor dict could not be checked offline; one that pickles other objects is refused
with a message saying so.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust_transfer.errors import CheckpointError
from robust_transfer.models.metadata import timm_arch, timm_name
from robust_transfer.models.published import PublishedModel

if TYPE_CHECKING:  # the catalogue is read without torch (zoo list); loading imports it
    import torch

    from robust_transfer.models.base import TransferModel

DRIVE_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
DRIVE_PAGE = "https://drive.google.com/file/d/{id}/view"
_LINF_EPS4 = 4 / 255
_LIU = "Liu et al. 2023 (arXiv 2302.14301) via RobustBench ImageNet Linf; accuracies: RobustBench model_info (AutoAttack, 5,000 val images)"
_SINGH = "Singh, Croce, Hein 2023 (arXiv 2303.01870) via RobustBench ImageNet Linf; accuracies: RobustBench model_info (AutoAttack, 5,000 val images)"


@dataclass(frozen=True)
class TimmPublishedModel(PublishedModel):
    """A published model whose file is a RobustBench-style timm state dict.

    Attributes:
        robustbench_name: the RobustBench model id (its file is ``<id>.pt``).
        drive_id: the Google Drive file id RobustBench downloads.
    """

    robustbench_name: str = ""
    drive_id: str = ""

    @property
    def timm_name(self) -> str:
        return timm_name(self.arch) or self.arch

    def load_checkpoint(self, path: str | os.PathLike, device: str | torch.device = "cpu",
                        **arch_overrides: Any) -> tuple[TransferModel, dict[str, Any]]:
        """Build the architecture and load the file at ``path`` into it.

        Args:
            path: the downloaded ``.pt`` file.
            device: where the model goes.
            **arch_overrides: passed to timm (tests use a shallower variant with the
                same key layout).

        Returns:
            The model in eval mode and its metadata (this entry's facts and the file's).

        Raises:
            CheckpointError: the file is unreadable, pickles code, or does not fit.
        """
        from robust_transfer.models.checkpoints import load_state_checked, read_torch_file
        from robust_transfer.models.timm_backbone import create_timm_source

        path = Path(path)
        model = create_timm_source(self.timm_name, num_classes=self.num_classes, **arch_overrides)
        state = robustbench_state_dict(read_torch_file(path), path)
        if self.timm_name.startswith("swin_"):
            from timm.models.swin_transformer import checkpoint_filter_fn

            state = checkpoint_filter_fn(state, model.net)  # timm < 0.9 Swin layout -> today's
        load_state_checked(model.net, state, path, f"{self.arch} ({self.name})")
        meta = {**self.to_dict(), "format": "robustbench", "source": str(path),
                "mean": model.normalizer.mean.flatten().tolist(),
                "std": model.normalizer.std.flatten().tolist(), "input_size": model.input_size,
                "channels": model.channels}
        return model.to(device).eval(), meta


def robustbench_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The backbone's state dict inside a RobustBench ImageNet file.

    ``obj['state_dict']`` (or ``obj['model']``) or ``obj``; ``module.`` and ``model.``
    prefixes removed (DataParallel and RobustBench's normaliser wrapper), the wrapper's
    ``normalize.mean|std`` dropped (the zoo entry sets the normaliser).

    Raises:
        CheckpointError: no dict of tensors is found.
    """
    import torch

    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise CheckpointError(f"{path} holds no state dict (a dict of tensors, alone or under "
                              "'state_dict'); is it the RobustBench file?")
    out = {}
    for key, value in obj.items():
        key = re.sub(r"^(module\.|model\.)+", "", key)
        if not key.startswith("normalize."):
            out[key] = value
    return out


def _entry(name: str, robustbench: str, timm: str, drive_id: str, clean: float,
           robust: float, note: str) -> TimmPublishedModel:
    return TimmPublishedModel(
        name=name, arch=timm_arch(timm), norm="linf", eps=_LINF_EPS4,
        eps_label="4/255", file=f"{robustbench}.pt", url=DRIVE_URL.format(id=drive_id),
        page=DRIVE_PAGE.format(id=drive_id), clean_acc=round(clean / 100, 4),
        robust_acc=round(robust / 100, 4), note=note, robustbench_name=robustbench,
        drive_id=drive_id)


# name, RobustBench id, timm architecture, Drive id (imagenet.py), clean %, AutoAttack %
# (model_info/imagenet/Linf/<id>.json)
_ENTRIES = (
    ("liu2023-convnext-b-linf-eps4", "Liu2023Comprehensive_ConvNeXt-B", "convnext_base",
     "10-nSm-qUftvfKXHeOAakBQl8rxm-jCbk", 76.02, 55.82, _LIU),
    ("liu2023-convnext-l-linf-eps4", "Liu2023Comprehensive_ConvNeXt-L", "convnext_large",
     "1dIPLNfdQtAnqZrKPyuy3_zDI-FVgJ2FH", 78.02, 58.48, _LIU),
    ("liu2023-swin-b-linf-eps4", "Liu2023Comprehensive_Swin-B", "swin_base_patch4_window7_224",
     "1-4mtxQCkThJUVdS3wvQ6NnmMZuySqR3c", 76.16, 56.16, _LIU),
    ("liu2023-swin-l-linf-eps4", "Liu2023Comprehensive_Swin-L", "swin_large_patch4_window7_224",
     "1-57sQfcrsDsslfDR18nRD7FnpQmsSBk7", 78.92, 59.56, _LIU),
    ("singh2023-convnext-t-convstem-linf-eps4", "Singh2023Revisiting_ConvNeXt-T-ConvStem",
     "singh2023_convnext_tiny_convstem", "1-FjtOF6LJ3-bf4VezsmWwncCxYSx-USP", 72.72, 49.46, _SINGH),
    ("singh2023-convnext-s-convstem-linf-eps4", "Singh2023Revisiting_ConvNeXt-S-ConvStem",
     "singh2023_convnext_small_convstem", "1-ZrMYajCCnrtV4oT0wa3qJJoQy1nUSnL", 74.10, 52.42, _SINGH),
    ("singh2023-convnext-b-convstem-linf-eps4", "Singh2023Revisiting_ConvNeXt-B-ConvStem",
     "singh2023_convnext_base_convstem", "1-lE-waaVvfL7lgBrydmZIM9UJimmHnVe", 75.90, 56.14, _SINGH),
    ("singh2023-convnext-l-convstem-linf-eps4", "Singh2023Revisiting_ConvNeXt-L-ConvStem",
     "singh2023_convnext_large_convstem", "10-YOVdM2EQjHemSi9x2H44qKRSOXVQmh", 77.00, 57.70, _SINGH),
    ("singh2023-vit-s-convstem-linf-eps4", "Singh2023Revisiting_ViT-S-ConvStem",
     "singh2023_vit_small_convstem", "1-1sUYXnj6bDXacIKI3KKqn4rlkmL-ZI2", 72.56, 48.08, _SINGH),
    ("singh2023-vit-b-convstem-linf-eps4", "Singh2023Revisiting_ViT-B-ConvStem",
     "singh2023_vit_base_convstem", "1-JBbfi_eH3tKMXObvPPHprrZae0RiQGT", 76.30, 54.66, _SINGH),
)

TIMM_ENTRIES: tuple[TimmPublishedModel, ...] = tuple(_entry(*row) for row in _ENTRIES)
"""The entries :mod:`.zoo` registers in its catalogue, in this order."""
