"""PGD (L2 and Linf) and FGSM with random start, in pixel space [0, 1].

Conventions of Madry et al. and the robustness library: the model normalises inside,
eps is measured in pixels, the attack runs with the model in eval mode (restored after),
L2 steps are normalised gradients per example and projection is per example.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from robust_transfer.engine.choices import NORMS
from robust_transfer.errors import ConfigError


@dataclass(frozen=True)
class AttackConfig:
    """A PGD (or FGSM-RS) threat model and its optimiser.

    Attributes:
        norm: ``"l2"`` or ``"linf"``.
        eps: radius of the ball in pixel units (Linf 8/255 is ``8/255``).
        steps: number of gradient steps (1 with ``method="fgsm_rs"``).
        step_size: step length; default ``2.5 * eps / steps`` (PGD) or ``1.25 * eps`` (FGSM-RS).
        random_start: start from a random point of the ball (always on for FGSM-RS).
        keep_best: return each example's highest-loss iterate instead of the last.
        method: ``"pgd"`` or ``"fgsm_rs"`` (Wong et al. 2020 fast adversarial training).
    """

    norm: str = "l2"
    eps: float = 0.5
    steps: int = 20
    step_size: float | None = None
    random_start: bool = False
    keep_best: bool = False
    method: str = "pgd"

    def __post_init__(self) -> None:
        if self.method not in ("pgd", "fgsm_rs"):
            raise ConfigError(f"unknown attack '{self.method}'; valid: pgd, fgsm_rs")
        check_threat(self.norm, self.eps, self.steps, self.step_size)

    @property
    def alpha(self) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        if self.method == "fgsm_rs":
            return 1.25 * self.eps
        return 2.5 * self.eps / self.steps

    def to_dict(self) -> dict:
        d = asdict(self)
        d["step_size"] = self.alpha
        return d

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.method == "fgsm_rs":
            return fgsm_rs(model, x, y, self.norm, self.eps, self.step_size)
        return pgd(model, x, y, self.norm, self.eps, self.steps, self.step_size,
                   self.random_start, self.keep_best)


def check_threat(norm: str, eps: float, steps: int = 1, step_size: float | None = None) -> None:
    """Refuse an impossible threat model (the functions below are public too).

    Raises:
        ConfigError: unknown norm, negative or NaN eps, a Linf eps above 1 (pixels are
            in [0, 1]), steps not a positive integer, step size not positive.
    """
    if norm not in NORMS:
        raise ConfigError(f"unknown norm '{norm}'; valid: {', '.join(NORMS)}")
    if not eps >= 0:
        raise ConfigError(f"eps must be >= 0, got {eps}")
    if norm == "linf" and eps > 1:  # the whole [0, 1] box: no threat model at all
        raise ConfigError(f"Linf eps {eps:g} is above 1, but pixels are in [0, 1]: such a "
                          "radius allows any image; give eps in pixel units, e.g. 8/255")
    if steps < 1 or int(steps) != steps:
        raise ConfigError(f"attack steps must be a positive integer, got {steps}")
    if step_size is not None and not step_size > 0:
        raise ConfigError(f"attack step size must be > 0, got {step_size}")


def _per_example_norm(v: torch.Tensor) -> torch.Tensor:
    # over all but the batch dimension, in any memory layout (flatten would copy channels-last)
    return torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)


def _attack_layout(x: torch.Tensor) -> torch.Tensor:
    """Channels-last images: oneDNN's (CPU) and cuDNN's convolutions prefer it, and the
    attack runs the model 1 + steps times (measured on the CPU: 10-step PGD on a small
    ResNet ~15% faster). Results are handed back in the caller's layout."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project perturbations onto the eps ball, per example."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _per_example_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale


def _step(grad: torch.Tensor, norm: str, alpha: float) -> torch.Tensor:
    if norm == "linf":
        return alpha * grad.sign()
    # guard ||g|| = 0: such an example simply does not move
    return alpha * grad / _per_example_norm(grad).clamp_min(1e-12)


def random_start(x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """A random point of the eps ball around ``x`` (Linf: uniform; L2: on the sphere)."""
    if norm == "linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        r = torch.randn_like(x)
        delta = eps * r / _per_example_norm(r).clamp_min(1e-12)
    return (x + delta).clamp(0.0, 1.0)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str = "l2", eps: float = 0.5,
        steps: int = 20, step_size: float | None = None, random_init: bool = False,
        keep_best: bool = False) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy loss.

    Args:
        model: maps pixels in [0, 1] to logits (normalisation inside).
        x: clean inputs in [0, 1].
        y: labels.
        norm: ``"l2"`` or ``"linf"``.
        eps: radius in pixel units; 0 returns ``x``.
        steps: gradient steps.
        step_size: default ``2.5 * eps / steps``.
        random_init: start at a random point of the ball.
        keep_best: return each example's highest-loss iterate.

    Returns:
        Adversarial inputs, same shape as ``x``, within the eps ball and [0, 1].

    Shape:
        x: ``[B, C, H, W]``; y: ``[B]``.

    Example:
        >>> x_adv = pgd(model, x, y, norm="linf", eps=8 / 255, steps=10)

    Raises:
        ConfigError: see :func:`check_threat`.
    """
    check_threat(norm, eps, steps, step_size)
    if eps == 0:
        return x.detach().clone()
    alpha = 2.5 * eps / steps if step_size is None else step_size
    was_training = model.training
    model.eval()
    try:
        x_in, x = x, _attack_layout(x.detach())
        x_adv = random_start(x, norm, eps) if random_init else x.clone()
        best, best_loss = x_adv.clone(), torch.full((x.shape[0],), -float("inf"), device=x.device)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            losses = F.cross_entropy(model(x_adv), y, reduction="none")
            grad, = torch.autograd.grad(losses.sum(), x_adv)
            if keep_best:
                best, best_loss = _keep_highest(best, best_loss, x_adv.detach(), losses.detach())
            x_adv = x_adv.detach() + _step(grad, norm, alpha)
            x_adv = (x + project(x_adv - x, norm, eps)).clamp(0.0, 1.0)
        if keep_best:
            with torch.no_grad():
                losses = F.cross_entropy(model(x_adv), y, reduction="none")
            x_adv, _ = _keep_highest(best, best_loss, x_adv, losses)
        return torch.empty_like(x_in).copy_(x_adv)  # the caller's memory layout
    finally:
        model.train(was_training)


def _keep_highest(best: torch.Tensor, best_loss: torch.Tensor, cand: torch.Tensor,
                  loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    better = loss > best_loss
    mask = better.view(-1, *([1] * (cand.dim() - 1)))
    return torch.where(mask, cand, best), torch.where(better, loss, best_loss)


def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str = "linf",
            eps: float = 8 / 255, step_size: float | None = None) -> torch.Tensor:
    """FGSM with random start (Wong et al. 2020): one step of 1.25 * eps from a random point."""
    check_threat(norm, eps, 1, step_size)
    alpha = 1.25 * eps if step_size is None else step_size
    if eps == 0:
        return x.detach().clone()
    was_training = model.training
    model.eval()
    try:
        x = x.detach()
        x0 = random_start(x, norm, eps).requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(x0), y, reduction="sum"), x0)
        x_adv = x0.detach() + _step(grad, norm, alpha)
        return (x + project(x_adv - x, norm, eps)).clamp(0.0, 1.0).detach()
    finally:
        model.train(was_training)
