"""Saliency maps (the paper's Fig. 4) through captum: Saliency, SmoothGrad, Integrated Gradients.

The map of an image is the gradient of its cross-entropy loss with respect to its input
pixels (in [0, 1]; the normaliser is inside the model). A robust model's map tends to look
like the object, a natural model's like noise (Tsipras et al. 2019). The methods
(:data:`METHODS`, captum's attribution classes, all attributing each image's own loss):

- ``saliency``: captum's ``Saliency`` (signed, ``abs=False``): the input gradient, equal to
  :func:`input_gradients` (our reference implementation; a test checks them equal).
- ``smoothgrad``: captum's ``NoiseTunnel`` around ``Saliency`` (Smilkov et al. 2017): the
  gradient averaged over ``samples`` copies with Gaussian noise of standard deviation
  ``sigma`` (pixel units), not clipped to [0, 1], as published.
- ``integrated-gradients``: captum's ``IntegratedGradients`` (Sundararajan et al. 2017):
  the gradient averaged along the straight path from a baseline image to the image, times
  their difference (``steps`` Gauss-Legendre points); the baseline is a grey level in
  [0, 1] (default 0, black) or an image of the model input's shape.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from robust_transfer.registry import Registry

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


class _Loss(torch.nn.Module):
    """Each image's own cross-entropy loss, ``[B]``: what every method attributes."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(self.model(x), y, reduction="none")


@dataclass(frozen=True)
class SaliencyConfig:
    """Which captum method, and its settings.

    Attributes:
        method: a name in :data:`METHODS`.
        samples: ``smoothgrad``: noisy copies per image.
        sigma: ``smoothgrad``: noise standard deviation in pixel units.
        steps: ``integrated-gradients``: points along the path.
        baseline: ``integrated-gradients``: a grey level in [0, 1], or an array of the
            model input's shape ``[C, H, W]`` (or ``[B, C, H, W]``); ``None`` means 0.
        batch_size: images per backward pass.
    """

    method: str = "saliency"
    samples: int = 25
    sigma: float = 0.1
    steps: int = 50
    baseline: float | np.ndarray | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        spec = METHODS.get(self.method)  # unknown names list the valid ones
        if self.samples < 1 or self.steps < 1 or self.batch_size < 1 or not self.sigma >= 0:
            raise ConfigError(f"samples, steps and batch_size must be >= 1 and sigma >= 0, got "
                              f"{self.samples}, {self.steps}, {self.batch_size} and {self.sigma}")
        if self.baseline is not None and not spec.baseline:
            raise ConfigError(f"method '{self.method}' takes no baseline; a baseline applies to "
                              f"{', '.join(n for n in METHODS.names() if METHODS.get(n).baseline)}")
        if isinstance(self.baseline, float | int) and not 0 <= self.baseline <= 1:
            raise ConfigError(f"a grey-level baseline must lie in [0, 1] (pixels), got {self.baseline}")

    def summary(self) -> dict[str, Any]:
        """The settings that apply to the method, for ``summary.json``."""
        out: dict[str, Any] = {"method": self.method}
        if self.method == "smoothgrad":
            out.update(samples=self.samples, sigma=self.sigma)
        if METHODS.get(self.method).baseline:
            b = self.baseline
            out.update(steps=self.steps, baseline=("image" if isinstance(b, np.ndarray)
                                                    else float(b or 0.0)))
        return out


@dataclass(frozen=True)
class SaliencyMethod:
    """One captum method: how to build and call it, and whether it takes a baseline."""

    build: Any  # (loss module, config) -> callable(x, y, baseline) -> attributions
    baseline: bool
    title: str


def _saliency(forward: _Loss, cfg: SaliencyConfig):
    from captum.attr import Saliency

    method = Saliency(forward)
    return lambda x, y, _b: method.attribute(x, additional_forward_args=(y,), abs=False)


def _smoothgrad(forward: _Loss, cfg: SaliencyConfig):
    from captum.attr import NoiseTunnel, Saliency

    method = NoiseTunnel(Saliency(forward))
    return lambda x, y, _b: method.attribute(
        x, nt_type="smoothgrad", nt_samples=cfg.samples, stdevs=cfg.sigma,
        nt_samples_batch_size=max(1, cfg.batch_size // len(x)), additional_forward_args=(y,),
        abs=False)


def _integrated(forward: _Loss, cfg: SaliencyConfig):
    from captum.attr import IntegratedGradients

    method = IntegratedGradients(forward)
    return lambda x, y, b: method.attribute(x, baselines=b, additional_forward_args=(y,),
                                            n_steps=cfg.steps, method="gausslegendre")


METHODS: Registry[SaliencyMethod] = Registry("saliency method")
METHODS.register("saliency", SaliencyMethod(_saliency, False, "loss gradient w.r.t. input pixels"))
METHODS.register("smoothgrad", SaliencyMethod(_smoothgrad, False,
                                              "SmoothGrad: loss gradient averaged over noisy copies"))
METHODS.register("integrated-gradients", SaliencyMethod(
    _integrated, True, "integrated gradients of the loss from the baseline"))


def baseline_tensor(baseline: float | np.ndarray | None, images: Tensor) -> Tensor:
    """The baseline as a tensor broadcastable to ``images`` ``[B, C, H, W]``.

    Raises:
        ConfigError: an array whose shape is neither ``[C, H, W]`` nor ``[B, C, H, W]``.
    """
    if baseline is None or isinstance(baseline, float | int):
        return torch.full_like(images[:1], float(baseline or 0.0))
    arr = torch.as_tensor(np.asarray(baseline), dtype=images.dtype, device=images.device)
    if tuple(arr.shape) == tuple(images.shape[1:]):
        return arr.unsqueeze(0)
    if tuple(arr.shape) == tuple(images.shape):
        return arr
    raise ConfigError(f"the baseline has shape {list(arr.shape)} but the model input is "
                      f"[C, H, W] = {list(images.shape[1:])}: give an image of that shape, or a "
                      "grey level in [0, 1]")


def attribute(model: torch.nn.Module, images: Tensor, labels: Tensor,
              config: SaliencyConfig | None = None, seed: int = 0) -> Tensor:
    """Attributions of each image's loss to its pixels by a captum method, model in eval mode.

    Every submodule's train/eval flag is restored afterwards, parameter ``.grad`` fields
    are left untouched, and SmoothGrad's noise comes from ``seed`` (torch's global
    generator is forked, so the caller's stream does not move).

    Args:
        model: a :class:`~robust_transfer.models.arch.TransferModel` (pixels in [0, 1]).
        images: float ``[B, C, H, W]`` in [0, 1].
        labels: ``[B]``.
        config: see :class:`SaliencyConfig`.
        seed: seeds the noise.

    Returns:
        ``[B, C, H, W]``, the images' dtype and device.

    Example:
        >>> maps = attribute(model, x, y, SaliencyConfig("integrated-gradients", steps=32))
    """
    cfg = config or SaliencyConfig()
    if len(images) != len(labels):
        raise ConfigError(f"{len(images)} images but {len(labels)} labels")
    if not images.is_floating_point():
        raise ConfigError("images must be float pixels in [0, 1] (InputPolicy.prepare makes them)")
    base = baseline_tensor(cfg.baseline, images)
    out = torch.empty_like(images)
    devices = [images.device] if images.device.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        run = METHODS.get(cfg.method).build(_Loss(model), cfg)
        for s in range(0, len(images), cfg.batch_size):
            x, y = images[s:s + cfg.batch_size], labels[s:s + cfg.batch_size].to(images.device).long()
            b = base if len(base) == 1 else base[s:s + cfg.batch_size]
            out[s:s + cfg.batch_size] = run(x.detach().clone().requires_grad_(True), y, b).detach()
    return out


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
                  path: str | os.PathLike, captions: Sequence[str] | None = None,
                  title: str = "loss gradient w.r.t. input pixels") -> Path:
    """Fig. 4: each image beside each model's gradient map (e.g. natural, robust).

    Args:
        images: ``[B, C, H, W]`` uint8 or float in [0, 1].
        gradients: model name -> ``[B, C, H, W]`` gradients (one column each).
        path: the PNG to write.
        captions: one per image (e.g. its class).
        title: the figure's title (the method).

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
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def explain_saliency(models: Mapping[str, TransferModel], data: ImageArrays,
                     indices: np.ndarray, out_dir: str | os.PathLike, *, samples: int = 0,
                     sigma: float = 0.0, seed: int = 0, overwrite: bool = False,
                     extra: Mapping[str, Any] | None = None,
                     config: SaliencyConfig | None = None) -> dict[str, Any]:
    """Saliency maps of chosen images under each model: ``gradients.npz``, PNG and JSON.

    Args:
        models: name -> :class:`~robust_transfer.models.arch.TransferModel`.
        data: the images (and labels, whose loss is differentiated).
        indices: which images of ``data``.
        out_dir: the folder to create.
        samples, sigma: SmoothGrad, when no ``config`` is given (``samples`` 0: plain
            gradients).
        seed: seeds the SmoothGrad noise, the same for every model.
        overwrite: write into an existing folder.
        extra: more provenance for the summary.
        config: the captum method and its settings (see :class:`SaliencyConfig`).

    Returns:
        The summary (also in ``out_dir/summary.json``).

    Raises:
        ConfigError: classes that do not match, or a baseline of the wrong shape (checked
            before the folder is made).
    """
    cfg = config or (SaliencyConfig("smoothgrad", samples=samples, sigma=sigma) if samples
                     else SaliencyConfig())
    _check_models(models, data)
    subset = data.subset(indices)
    inputs = {}
    for name, model in models.items():
        policy = InputPolicy(channels=model.channels, size=model.input_size, augment=False)
        inputs[name] = policy.prepare(subset.images).to(next(model.parameters()).device)
        baseline_tensor(cfg.baseline, inputs[name])  # a wrong shape is refused before writing
    if Path(out_dir).exists() and not overwrite:
        prepare_output_dir(out_dir, overwrite)  # raises now, before the computation
    with staged_dir(out_dir) as stage:  # whole or absent, even when interrupted
        return _write_saliency(models, data, subset, indices, inputs, stage, cfg, seed, extra)


def _write_saliency(models: Mapping[str, TransferModel], data: ImageArrays, subset: ImageArrays,
                    indices: np.ndarray, inputs: Mapping[str, torch.Tensor], out: Path,
                    cfg: SaliencyConfig, seed: int,
                    extra: Mapping[str, Any] | None) -> dict[str, Any]:
    grads = {name: attribute(model, inputs[name], subset.labels, cfg, seed).cpu().numpy()
             for name, model in models.items()}
    write_npz(out / "gradients.npz", {**grads, "indices": np.asarray(indices),
                                      "labels": subset.labels.numpy()})
    captions = [data.info.classes[int(y)] for y in subset.labels]
    plot_saliency(subset.images.numpy(), grads, out / "saliency.png", captions,
                  METHODS.get(cfg.method).title)
    smooth = cfg.method == "smoothgrad"
    summary = {"models": list(models), "n_images": len(subset),
               "smoothgrad_samples": cfg.samples if smooth else 0, "sigma": cfg.sigma if smooth else 0.0,
               "seed": seed, "dataset": data.info.name, "split": data.split, **cfg.summary(),
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
