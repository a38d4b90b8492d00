"""One training loop for natural, adversarial (PGD, FGSM-RS) and fine-tuning runs.

Data come from :class:`~robust_transfer.data.loader.TensorLoader` (re-exported here), which
batches in-memory tensors (uint8 images through an input policy, or cached float features)
without worker processes, on the run's device when they fit there: on small images that is
much faster than a ``DataLoader`` over PIL images, and it shards itself under
``torch.distributed``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from robust_transfer.data.loader import TensorLoader
from robust_transfer.engine.attacks import AttackConfig
from robust_transfer.engine.choices import SCHEDULES
from robust_transfer.errors import ConfigError, NonFiniteError
from robust_transfer.events import (
    METRICS_COLUMNS,
    BatchDone,
    EpochDone,
    EpochMetrics,
    EvalBatchDone,
    Listener,
    ProgressEvent,
    as_event,
    combine_callbacks,
)
from robust_transfer.io import atomic_write_text

__all__ = ["EpochMetrics", "FitOptions", "MetricsCSV", "OptimConfig", "TensorBoardWriter",
           "TensorLoader", "combine_callbacks", "evaluate", "fit", "metrics_csv", "resolve_device"]

Callback = Listener
"""``callback(event)``: :class:`~robust_transfer.events.BatchDone`, ``EvalBatchDone`` and
``EpochDone`` events (see :func:`fit`)."""


@dataclass(frozen=True)
class OptimConfig:
    """SGD with momentum and weight decay, and its learning-rate schedule.

    Attributes:
        lr: initial learning rate (the paper: 0.1).
        momentum: SGD momentum (0.9).
        weight_decay: L2 penalty (5e-4).
        schedule: ``"step"`` divides lr by 10 every ``max(1, epochs // 3)`` epochs (the
            paper's), ``"cosine"`` anneals to 0, ``"constant"`` keeps it.
    """

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be a finite number > 0, got {self.lr}")
        if not (0 <= self.momentum < math.inf and 0 <= self.weight_decay < math.inf):
            raise ConfigError("momentum and weight decay must be finite numbers >= 0, got "
                              f"{self.momentum} and {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule '{self.schedule}'; valid: {', '.join(SCHEDULES)}")

    def build(self, params: list[nn.Parameter],
              epochs: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        sched: torch.optim.lr_scheduler.LRScheduler
        if self.schedule == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1)
        elif self.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        return opt, sched




def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def require_device(device: str | torch.device) -> None:
    """Refuse, before anything runs, a CUDA or MPS device this machine does not have.

    ``auto`` and ``cpu`` always pass.

    Raises:
        ConfigError: an unknown device name, or a device that is not here.
    """
    if str(device) == "auto":
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}'; valid: auto, cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device '{device}' is not available here: torch sees no CUDA GPU; "
                              "use device auto or cpu, or run where a GPU is")
        if (dev.index or 0) >= count:
            raise ConfigError(f"device '{device}' is not available here ({count} CUDA device(s)); "
                              "use device auto, cpu or one of those")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                    and torch.backends.mps.is_available()):
        raise ConfigError(f"device '{device}' is not available here (no Apple MPS); use cpu")


def autocast(device: torch.device) -> AbstractContextManager:
    """The mixed precision the loop runs under on ``device``: bf16 autocast on CUDA, none
    elsewhere (on the CPU it is slower and changes numerics)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def _batch_metrics(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    return float(F.cross_entropy(logits.float(), y, reduction="sum")), int((logits.argmax(1) == y).sum())


def evaluate(model: nn.Module, loader, attack: AttackConfig | None = None,
             device: str | torch.device = "auto",
             callback: Callback | None = None) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``loader``; under ``attack`` if given.

    The model is evaluated in eval mode and its mode restored after.

    Args:
        model: the classifier (inputs in [0, 1], normalisation inside).
        loader: ``(inputs, labels)`` batches with a length, or an ImageArrays, a torch
            ``Dataset`` or ``DataLoader`` of ``(image, label)`` (materialised and fitted to
            the model by :func:`robust_transfer.data.torchdata.model_loader`).
        attack: measure accuracy on this attack's adversarial examples.
        device: where to run.
        callback: called with an :class:`~robust_transfer.events.EvalBatchDone` after
            each batch.

    Returns:
        ``(mean cross-entropy, accuracy)``.
    """
    from robust_transfer.data.torchdata import is_image_data, model_loader

    if is_image_data(loader):
        loader = model_loader(loader, model)
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    batches = len(loader) if hasattr(loader, "__len__") else None  # None: unknown
    try:
        for i, (x, y) in enumerate(loader):
            x, y = _to(x, device), y.to(device)
            if attack is not None:
                x = attack(model, x, y)
            with torch.no_grad(), autocast(device):
                logits = model(x)
            loss, corr = _batch_metrics(logits, y)
            loss_sum, correct, count = loss_sum + loss, correct + corr, count + len(y)
            if callback:
                callback(EvalBatchDone(i + 1, batches))
    finally:
        model.train(was_training)
    return loss_sum / max(count, 1), correct / max(count, 1)


@dataclass
class FitOptions:
    """Everything :func:`fit` needs besides the model and the data.

    Attributes:
        epochs: number of passes over the training data.
        optim: optimiser and schedule.
        adversary: train on its adversarial examples (PGD or FGSM-RS); None = natural.
        eval_every: evaluate the test loader every this many epochs (and at the last).
        eval_attack: also measure robust accuracy under this attack when evaluating.
        seed: seeds torch's global generator (augmentation, random starts).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        checkpoint: a file where the training state (weights, optimiser, schedule, RNG,
            epoch, metrics so far) is saved, whole, after every epoch; a ``fit`` that finds
            it resumes after its epoch and ends as an uninterrupted one would
            (:func:`load_epoch_state`). ``None``: no checkpoint.
    """

    epochs: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)
    adversary: AttackConfig | None = None
    eval_every: int = 1
    eval_attack: AttackConfig | None = None
    seed: int = 0
    device: str = "auto"
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {self.epochs}")
        if self.eval_every < 1:
            raise ConfigError(f"eval_every must be a positive integer, got {self.eval_every}")


def fit(model: nn.Module, train_loader: TensorLoader, test_loader=None,
        options: FitOptions | None = None, callback: Callback | None = None,
        attack_model: nn.Module | None = None, val_loader=None) -> list[EpochMetrics]:
    """Train ``model`` and return per-epoch metrics.

    Args:
        model: the module to train (may be a DistributedDataParallel wrapper).
        train_loader: training batches.
        test_loader: evaluated every ``options.eval_every`` epochs and at the last.
        options: see :class:`FitOptions`.
        callback: called with a :class:`~robust_transfer.events.BatchDone` after each
            step, an ``EvalBatchDone`` while evaluating and an ``EpochDone`` after each
            epoch (:mod:`robust_transfer.events`); combine several with
            :func:`~robust_transfer.events.combine_callbacks` (:class:`MetricsCSV`,
            :class:`TensorBoardWriter`, the CLI's progress). The library never prints.
        attack_model: the unwrapped model under DDP: attacks and evaluation run on it
            (a DDP forward on one rank alone would wait for the others' buffer broadcast).
        val_loader: a validation set evaluated whenever the test loader is.
    """
    opts = options or FitOptions()
    device = resolve_device(opts.device)
    torch.manual_seed(opts.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen")
    optimizer, scheduler = opts.optim.build(params, opts.epochs)
    attack_model = attack_model or model
    history = _resume(opts.checkpoint, model, optimizer, scheduler)
    for epoch in range(len(history) + 1, opts.epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loader.set_epoch(epoch)
        loss, acc = _train_epoch(model, train_loader, optimizer, opts.adversary, attack_model,
                                 device, callback, (epoch, opts.epochs))
        scheduler.step()
        metrics = EpochMetrics(epoch, lr, loss, acc)
        if test_loader is not None and (epoch % opts.eval_every == 0 or epoch == opts.epochs):
            metrics.test_loss, metrics.test_acc = evaluate(attack_model, test_loader, None, device,
                                                           callback)
            if val_loader is not None:
                metrics.val_loss, metrics.val_acc = evaluate(attack_model, val_loader, None,
                                                             device, callback)
            if opts.eval_attack is not None:
                _, metrics.robust_acc = evaluate(attack_model, test_loader, opts.eval_attack,
                                                 device, callback)
        require_finite_metrics(metrics, evaluated=not math.isnan(metrics.test_acc))
        metrics.seconds = time.perf_counter() - start
        history.append(metrics)
        if opts.checkpoint:
            save_epoch_state(opts.checkpoint, model, optimizer, scheduler, history)
        if callback:
            callback(EpochDone(replace(metrics)))
    return history


def require_finite_metrics(metrics: EpochMetrics, evaluated: bool = True) -> None:
    """Stop a run whose losses became NaN or infinite: it diverged, and what it would go on
    to record (chance accuracy, NaN loss) would look like a result.

    Args:
        metrics: the epoch's.
        evaluated: whether the test (and validation) losses were measured this epoch
            (they are NaN on epochs that were not).

    Raises:
        NonFiniteError: naming the epoch and the loss.
    """
    names = ("train_loss", "test_loss", "val_loss") if evaluated else ("train_loss",)
    for name in names:
        value = getattr(metrics, name)
        if name == "val_loss" and math.isnan(value) and math.isnan(metrics.val_acc):
            continue  # no validation set
        if not math.isfinite(value):
            raise NonFiniteError(f"{name} is {value} at epoch {metrics.epoch} (lr {metrics.lr:g}): "
                                 "training diverged; lower the learning rate, or check the "
                                 "source's weights and the data")


def save_epoch_state(path: str | os.PathLike, model: nn.Module, optimizer, scheduler,
                     history: list[EpochMetrics]) -> None:
    """Save what :func:`fit` needs to go on after ``history[-1]``, whole or not at all.

    The RNG states matter: augmentation and random starts draw from torch's global
    generator, so a resumed run draws what the uninterrupted one would have.
    """
    from robust_transfer.io import atomic_write

    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
             "history": [m.to_dict() for m in history]}
    with atomic_write(path) as f:
        torch.save(state, f)


def load_epoch_state(path: str | os.PathLike) -> dict | None:
    """The state :func:`save_epoch_state` wrote, or ``None`` when there is none."""
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _resume(path: str | None, model: nn.Module, optimizer, scheduler) -> list[EpochMetrics]:
    """Restore a checkpointed training state into these objects; the epochs it had done."""
    state = load_epoch_state(path) if path else None
    if state is None:
        return []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return [EpochMetrics(**m) for m in state["history"]]


def _train_epoch(model, loader, optimizer, adversary, attack_model, device, callback,
                 epoch_of: tuple[int, int]) -> tuple[float, float]:
    model.train()
    batches = len(loader)
    loss_sum, correct, count = 0.0, 0, 0
    for i, (x, y) in enumerate(loader):
        x, y = _to(x, device), y.to(device)
        if adversary is not None:
            x = adversary(attack_model, x, y)
        with autocast(device):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        b_loss, b_corr = _batch_metrics(logits.detach(), y)
        loss_sum, correct, count = loss_sum + b_loss, correct + b_corr, count + len(y)
        if callback:
            callback(BatchDone(i + 1, batches, epoch_of[0], epoch_of[1], float(loss.detach())))
    return loss_sum / max(count, 1), correct / max(count, 1)


# --- callbacks that record a run beside its output -------------------------------------
class MetricsCSV:
    """Writes each epoch's metrics to a CSV file as training goes (a ``fit`` callback).

    Columns are :data:`METRICS_COLUMNS` (the :class:`EpochMetrics` fields), one row per
    epoch; epochs that were not evaluated leave the test columns empty. The file is
    rewritten whole after every epoch (temporary file, then rename), so a job killed
    mid-training leaves the epochs finished so far and never a half row.

    Args:
        path: the CSV file; its folder is created.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.rows: list[dict] = []

    def __call__(self, event: ProgressEvent | str, info: Mapping[str, Any] | None = None) -> None:
        event = as_event(event, info)  # the old (kind, info) form too
        if not isinstance(event, EpochDone):
            return
        self.rows.append(event.metrics.to_dict())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, metrics_csv(self.rows))


def metrics_csv(rows: list[dict]) -> str:
    """Epoch metrics (dicts with :data:`METRICS_COLUMNS` keys) as CSV text; NaN as empty."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if isinstance(v, float) and v != v else v
                         for k, v in ((k, row.get(k)) for k in METRICS_COLUMNS)})
    return out.getvalue()


class TensorBoardWriter:
    """Per-epoch scalars (and the per-batch training loss) for TensorBoard.

    Uses ``torch.utils.tensorboard``, which needs the ``tensorboard`` package
    (``pip install 'robust-transfer[tensorboard]'``); nothing else in the project does.

    Args:
        log_dir: the run's TensorBoard folder (``tensorboard --logdir`` its parent).
        tag: prefix of the scalars' names (``finetune``, ``pretrain``).

    Raises:
        ConfigError: tensorboard is not installed.
    """

    def __init__(self, log_dir: str | os.PathLike, tag: str = "train") -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install "
                              "tensorboard (or robust-transfer[tensorboard])") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.tag, self.step = tag, 0

    def __call__(self, event: ProgressEvent | str, info: Mapping[str, Any] | None = None) -> None:
        event = as_event(event, info)  # the old (kind, info) form too
        if isinstance(event, BatchDone):
            self.step += 1
            if event.loss is not None:
                self.writer.add_scalar(f"{self.tag}/batch_loss", event.loss, self.step)
        elif isinstance(event, EpochDone):
            for key, value in event.metrics.to_dict().items():
                if key != "epoch" and isinstance(value, float) and value == value:
                    self.writer.add_scalar(f"{self.tag}/{key}", value, event.metrics.epoch)
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
