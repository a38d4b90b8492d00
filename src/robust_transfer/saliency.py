"""Input-gradient saliency maps (the paper's Fig. 4), with an optional SmoothGrad.

The map of an image is the gradient of its cross-entropy loss with respect to its input
pixels (in [0, 1]; the normaliser is inside the model). A robust model's map tends to look
like the object, a natural model's like noise (Tsipras et al. 2019). SmoothGrad
(Smilkov et al. 2017) averages the gradient over ``samples`` copies of the image with
Gaussian noise of standard deviation ``sigma`` (pixel units) added; the noisy copies are
not clipped to [0, 1], so the average is that of the method as published.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from robust_transfer.data import ImageArrays, InputPolicy
from robust_transfer.errors import ConfigError
from robust_transfer.io import staged_dir
from robust_transfer.models.modes import eval_mode
from robust_transfer.outputs import (
    prepare_output_dir,
    save_figure,
    to_display,
    write_json,
    write_npz,
)

if TYPE_CHECKING:
    from robust_transfer.models.base import TransferModel

Tensor = torch.Tensor


def input_gradients(model: torch.nn.Module, images: Tensor, labels: Tensor, *,
                    samples: int = 0, sigma: float = 0.0, batch_size: int = 64,
                    generator: torch.Generator | None = None) -> Tensor:
    """Gradient of each image's loss w.r.t. its pixels, the model in eval mode.

    Each image's gradient is that of its own loss (summed, not averaged, over the batch).
    Parameter ``.grad`` fields are left untouched, and every submodule's train/eval flag is
    restored afterwards.

    Args:
        model: a :class:`~robust_transfer.models.arch.TransferModel` (pixels in [0, 1]).
        images: float ``[B, C, H, W]`` in [0, 1], the model's dtype.
        labels: ``[B]`` the classes whose loss is differentiated.
        samples: SmoothGrad copies per image; 0 means the plain gradient.
        sigma: SmoothGrad noise standard deviation in pixel units.
        batch_size: images (or noisy copies) per backward pass.
        generator: seeds the noise.

    Returns:
        ``[B, C, H, W]``, the images' dtype and device.

    Example:
        >>> g = input_gradients(model, x, y, samples=25, sigma=0.1)
    """
    if samples < 0 or sigma < 0:
        raise ConfigError(f"samples and sigma must be >= 0, got {samples} and {sigma}")
    if len(images) != len(labels):
        raise ConfigError(f"{len(images)} images but {len(labels)} labels")
    if not images.is_floating_point():
        raise ConfigError("images must be float pixels in [0, 1] (InputPolicy.prepare makes them)")
    out = torch.empty_like(images)
    with eval_mode(model):
        for s in range(0, len(images), batch_size):
            x, y = images[s:s + batch_size], labels[s:s + batch_size]
            out[s:s + batch_size] = (_plain(model, x, y) if samples == 0
                                     else _smooth(model, x, y, samples, sigma, batch_size, generator))
    return out


def _plain(model: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y.to(x.device).long(), reduction="sum")
    return torch.autograd.grad(loss, x)[0]


def _smooth(model: torch.nn.Module, x: Tensor, y: Tensor, samples: int, sigma: float,
            batch_size: int, generator: torch.Generator | None) -> Tensor:
    total = torch.zeros_like(x)
    per_pass = max(1, batch_size // len(x))  # noisy copies of the whole batch per pass
    done = 0
    while done < samples:
        k = min(per_pass, samples - done)
        noise = torch.randn((k, *x.shape), generator=generator, dtype=x.dtype).to(x.device)
        noisy = (x.unsqueeze(0) + sigma * noise).reshape(-1, *x.shape[1:])
        grads = _plain(model, noisy, y.repeat(k))
        total += grads.reshape(k, *x.shape).sum(0)
        done += k
    return total / samples


def saliency_image(grad: Tensor | np.ndarray, clip_std: float = 3.0) -> np.ndarray:
    """Gradients as displayable images: centred, clipped at ``clip_std`` std, scaled to [0, 1].

    Each image is scaled by its own standard deviation (as in Tsipras et al.), so maps of
    models with very different gradient sizes can be compared by shape.

    Args:
        grad: ``[B, C, H, W]``.
        clip_std: clip at this many standard deviations.

    Returns:
        float ``[B, C, H, W]`` in [0, 1]; 0.5 is a zero gradient.
    """
    g = torch.as_tensor(np.asarray(grad), dtype=torch.float64)
    flat = g.reshape(len(g), -1)
    centred = flat - flat.mean(1, keepdim=True)
    std = centred.std(1, keepdim=True).clamp_min(1e-30)
    scaled = (centred / (2 * clip_std * std)).clamp(-0.5, 0.5) + 0.5
    return scaled.reshape(g.shape).numpy()


def plot_saliency(images: Tensor | np.ndarray, gradients: Mapping[str, Tensor | np.ndarray],
                  path: str | os.PathLike, captions: Sequence[str] | None = None) -> Path:
    """Fig. 4: each image beside each model's gradient map (e.g. natural, robust).

    Args:
        images: ``[B, C, H, W]`` uint8 or float in [0, 1].
        gradients: model name -> ``[B, C, H, W]`` gradients (one column each).
        path: the PNG to write.
        captions: one per image (e.g. its class).

    Returns:
        ``path``.
    """
    images = np.asarray(images)
    maps = {name: saliency_image(g) for name, g in gradients.items()}
    rows, cols = len(images), 1 + len(maps)
    fig = Figure(figsize=(1.6 * cols, 1.6 * rows + 0.3))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        columns = [("image", images[r])] + [(name, m[r]) for name, m in maps.items()]
        for c, (title, img) in enumerate(columns):
            shown = to_display(img)
            axes[r, c].imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
        if captions is not None:
            axes[r, 0].set_ylabel(captions[r], fontsize=8)
    fig.suptitle("loss gradient w.r.t. input pixels", fontsize=10)
    return save_figure(fig, path)


def explain_saliency(models: Mapping[str, TransferModel], data: ImageArrays,
                     indices: np.ndarray, out_dir: str | os.PathLike, *, samples: int = 0,
                     sigma: float = 0.0, seed: int = 0, overwrite: bool = False,
                     extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Saliency maps of chosen images under each model: ``gradients.npz``, PNG and JSON.

    Args:
        models: name -> :class:`~robust_transfer.models.arch.TransferModel`.
        data: the images (and labels, whose loss is differentiated).
        indices: which images of ``data``.
        out_dir: the folder to create.
        samples, sigma: SmoothGrad (see :func:`input_gradients`).
        seed: seeds the SmoothGrad noise, the same for every model.
        overwrite: write into an existing folder.
        extra: more provenance for the summary.

    Returns:
        The summary (also in ``out_dir/summary.json``).
    """
    _check_models(models, data)
    if Path(out_dir).exists() and not overwrite:
        prepare_output_dir(out_dir, overwrite)  # raises now, before the computation
    with staged_dir(out_dir) as stage:  # whole or absent, even when interrupted
        return _write_saliency(models, data, indices, stage, samples, sigma, seed, extra)


def _write_saliency(models: Mapping[str, TransferModel], data: ImageArrays, indices: np.ndarray,
                    out: Path, samples: int, sigma: float, seed: int,
                    extra: Mapping[str, Any] | None) -> dict[str, Any]:
    subset = data.subset(indices)
    grads = {}
    for name, model in models.items():
        policy = InputPolicy(channels=model.channels, size=model.input_size, augment=False)
        x = policy.prepare(subset.images).to(next(model.parameters()).device)
        g = torch.Generator().manual_seed(seed)
        grads[name] = input_gradients(model, x, subset.labels, samples=samples, sigma=sigma,
                                      generator=g).cpu().numpy()
    write_npz(out / "gradients.npz", {**grads, "indices": np.asarray(indices),
                                      "labels": subset.labels.numpy()})
    captions = [data.info.classes[int(y)] for y in subset.labels]
    plot_saliency(subset.images.numpy(), grads, out / "saliency.png", captions)
    summary = {"models": list(models), "n_images": len(subset), "smoothgrad_samples": samples,
               "sigma": sigma, "seed": seed, "dataset": data.info.name, "split": data.split,
               "files": ["gradients.npz", "saliency.png"], **(extra or {})}
    write_json(out / "summary.json", summary)
    return summary


def _check_models(models: Mapping[str, TransferModel], data: ImageArrays) -> None:
    if not models:
        raise ConfigError("no models given")
    for name, model in models.items():
        if model.head.out_features != data.info.num_classes:
            raise ConfigError(
                f"model '{name}' has {model.head.out_features} classes but dataset "
                f"'{data.info.name}' has {data.info.num_classes}; use a checkpoint fine-tuned on it")
