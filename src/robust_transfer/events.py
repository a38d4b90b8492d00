"""The progress events the library reports, documented once.

Long computations take a ``callback`` (a :data:`Listener`) and call it with one of these
small frozen records as they go; the library never prints. Write a listener as a function
of one event and match on its type::

    def on_event(event: ProgressEvent) -> None:
        if isinstance(event, EpochDone):
            print(event.metrics.epoch, event.metrics.test_acc)

    rt.finetune(model, train, test, callback=on_event)

:class:`~robust_transfer.progress.Progress` (the CLI's progress lines),
:class:`~robust_transfer.engine.training.MetricsCSV` and
:class:`~robust_transfer.engine.training.TensorBoardWriter` are listeners;
:func:`combine_callbacks` makes one of several.

=====================  ===========================================  ========================
event                  when                                         emitted by
=====================  ===========================================  ========================
:class:`BatchDone`     a training step finished                     ``fit`` (finetune,
                                                                    pretrain)
:class:`EvalBatchDone` an evaluation batch finished                 ``evaluate``, ``fit``
:class:`EpochDone`     an epoch finished, with its metrics          ``fit``
:class:`StepDone`      anything else counted (a solve's steps,      influence, LDS
                       retrained subsets, images scored)
=====================  ===========================================  ========================

Transition from the old ``callback(kind, info)`` form: the library's listeners still
accept ``listener("step", {"done": ..., "total": ..., "what": ...})`` (and the other
kinds, :func:`as_event` converts them), so code that calls a callback the old way keeps
working; a hand-written consumer of the old form is wrapped with :func:`legacy_listener`.
New code emits ``callback(StepDone(done, total, what))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar


@dataclass
class EpochMetrics:
    """What one epoch measured. Test fields are NaN on epochs that were not evaluated."""

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    test_loss: float = math.nan
    test_acc: float = math.nan
    robust_acc: float = math.nan
    seconds: float = 0.0
    val_loss: float = math.nan
    val_acc: float = math.nan

    def to_dict(self) -> dict:
        return asdict(self)


METRICS_COLUMNS = tuple(f.name for f in fields(EpochMetrics))
"""The :class:`EpochMetrics` fields in order: the columns of a run's metrics CSV."""


@dataclass(frozen=True)
class BatchDone:
    """A training step finished: ``batch`` of ``batches`` in epoch ``epoch`` of ``epochs``.

    ``epochs`` is None when unknown (a loop that is not ``fit``); ``loss`` is the step's
    mean training loss.
    """

    kind: ClassVar[str] = "batch"
    batch: int
    batches: int
    epoch: int = 1
    epochs: int | None = None
    loss: float | None = None


@dataclass(frozen=True)
class EvalBatchDone:
    """An evaluation batch finished: ``batch`` of ``batches`` (None: a loader without a length)."""

    kind: ClassVar[str] = "eval_batch"
    batch: int
    batches: int | None = None


@dataclass(frozen=True)
class EpochDone:
    """An epoch finished; ``metrics`` are what it measured (a copy: later changes do not
    reach it)."""

    kind: ClassVar[str] = "epoch"
    metrics: EpochMetrics


@dataclass(frozen=True)
class StepDone:
    """``done`` of ``total`` units of anything else (``total`` None: unknown); ``what`` says
    what is counted (``"Cholesky"``, ``"robust: retrained subsets"``), None keeps the last."""

    kind: ClassVar[str] = "step"
    done: float
    total: float | None = None
    what: str | None = None


ProgressEvent = BatchDone | EvalBatchDone | EpochDone | StepDone
Listener = Callable[[ProgressEvent], None]
"""``callback(event)``: what every ``callback`` argument of the library is called with."""
LegacyCallback = Callable[[str, dict], None]
"""The old ``callback(kind, info)`` form (see :func:`as_event`, :func:`legacy_listener`)."""

EVENT_TYPES: dict[str, type] = {t.kind: t for t in (BatchDone, EvalBatchDone, EpochDone, StepDone)}


def as_event(event: ProgressEvent | str, info: Mapping[str, Any] | None = None) -> ProgressEvent:
    """The typed event of a listener's call, in the new or the old form.

    ``as_event(StepDone(1, 3))`` returns it; ``as_event("step", {"done": 1, "total": 3})``
    builds it (``"epoch"`` takes the :class:`EpochMetrics` fields as ``info``).

    Raises:
        ValueError: an unknown kind, or an event object with ``info`` beside it.
    """
    if not isinstance(event, str):
        if info is not None:
            raise ValueError(f"a {type(event).__name__} event takes no info dict")
        return event
    kind, values = event, dict(info or {})
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown progress event '{kind}'; valid: {', '.join(EVENT_TYPES)}")
    if kind == "epoch":
        return EpochDone(EpochMetrics(**values))
    return EVENT_TYPES[kind](**values)


def event_info(event: ProgressEvent) -> dict[str, Any]:
    """The old form's ``info`` dict of an event (absent optional values left out)."""
    if isinstance(event, EpochDone):
        return event.metrics.to_dict()
    return {k: v for k, v in asdict(event).items() if v is not None}


def legacy_listener(callback: LegacyCallback) -> Listener:
    """A listener that calls an old-form ``callback(kind, info)`` consumer."""

    def listen(event: ProgressEvent) -> None:
        callback(event.kind, event_info(event))

    return listen


def combine_callbacks(*listeners: Callable[..., None] | None) -> Callable[..., None] | None:
    """One listener that calls each of ``listeners`` (``None`` entries skipped) in order.

    The combined listener accepts the old ``(kind, info)`` form too and passes each
    listener the typed event.
    """
    active = [c for c in listeners if c is not None]
    if len(active) <= 1:
        return active[0] if active else None

    def every(event: ProgressEvent | str, info: Mapping[str, Any] | None = None) -> None:
        typed = as_event(event, info)
        for listener in active:
            listener(typed)

    return every
