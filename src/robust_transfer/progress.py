"""Progress and log lines for long commands, on a terminal or in a cluster job's log.

The library never prints: long computations report through callbacks (training's
``callback(event)``, a study's snapshots, a download's byte counts) and log through
:mod:`logging` (``logging.getLogger(__name__)``). This module turns both into output on
stderr, for every command the same way:

* on a terminal, one live status line redrawn in place (rate, elapsed, ETA);
* anywhere else (a batch job's log file, a pipe), timestamped lines: one at the start,
  one every ``interval`` seconds (default 30, ``--progress-interval`` or
  ``$ROBUST_TRANSFER_PROGRESS_INTERVAL``) and one at the end, each with the rate and ETA.

A background thread keeps the lines coming while no event arrives (a long evaluation,
feature extraction, an influence solve), so a job that is alive is seen to be alive.

The events :meth:`Progress.__call__` shows are those of :mod:`robust_transfer.events`
(training batches counted over all epochs, evaluation batches as a status note inside a
training run, one log line per epoch, any other counted step).

Example:
    >>> configure_logging("info")
    >>> with Progress("finetune") as progress:
    ...     finetune(model, train, test, callback=progress)
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from robust_transfer.errors import ConfigError
from robust_transfer.events import (
    BatchDone,
    EpochDone,
    EpochMetrics,
    EvalBatchDone,
    ProgressEvent,
    StepDone,
    as_event,
)
from robust_transfer.units import format_bytes

DEFAULT_INTERVAL = 30.0
INTERVAL_ENV = "ROBUST_TRANSFER_PROGRESS_INTERVAL"
LOG_LEVELS = ("debug", "info", "warning", "error")
LIVE_REDRAW = 0.2  # seconds between redraws of the live line

logger = logging.getLogger(__name__)
_PACKAGE = "robust_transfer"
_configured_interval: float | None = None


class _Formatter(logging.Formatter):
    """``message`` (``level: message`` above info); timestamped off a terminal."""

    def __init__(self, timestamps: bool) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.levelno != logging.INFO:
            text = f"{record.levelname.lower()}: {text}"
        if self.timestamps:
            text = f"{self.formatTime(record, self.datefmt)} {text}"
        return text


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record (it may be replaced later)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _isatty(stream: IO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def parse_interval(value: str | float) -> float:
    """Seconds between progress lines off a terminal: a number > 0.

    Raises:
        ConfigError: not a positive number.
    """
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"progress interval must be a number of seconds, got '{value}'") from None
    if not seconds > 0 or math.isinf(seconds):
        raise ConfigError(f"progress interval must be > 0 seconds, got '{value}'")
    return seconds


def configure_logging(level: str = "info", interval: float | None = None,
                      stream: IO | None = None) -> None:
    """Send the package's log records and progress lines to ``stream`` (default stderr).

    The CLI calls it once with ``--log-level`` and ``--progress-interval``; Python users
    may call it to see the same lines. Calling it again replaces the earlier setting.

    Args:
        level: one of :data:`LOG_LEVELS`; ``warning`` and above also silence progress.
        interval: seconds between progress lines off a terminal (default: the
            environment's ``$ROBUST_TRANSFER_PROGRESS_INTERVAL``, else 30).
        stream: where lines go (default: ``sys.stderr``, looked up at each line).

    Raises:
        ConfigError: unknown level or a non-positive interval.
    """
    global _configured_interval
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(f"unknown log level '{level}'; valid: {', '.join(LOG_LEVELS)}")
    _configured_interval = None if interval is None else parse_interval(interval)
    package = logging.getLogger(_PACKAGE)
    for old in [h for h in package.handlers if getattr(h, "_robust_transfer", False)]:
        package.removeHandler(old)
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(_Formatter(timestamps=not _isatty(stream or sys.stderr)))
    handler._robust_transfer = True  # type: ignore[attr-defined]  # ours: the next call removes it
    package.addHandler(handler)
    package.setLevel(level.upper())
    package.propagate = False  # the CLI owns stderr: no second copy through the root logger


def progress_interval(explicit: float | None = None) -> float:
    """The interval in force: ``explicit``, else :func:`configure_logging`'s, else the
    environment's, else :data:`DEFAULT_INTERVAL`.

    Raises:
        ConfigError: the environment variable is not a positive number.
    """
    if explicit is not None:
        return parse_interval(explicit)
    if _configured_interval is not None:
        return _configured_interval
    env = os.environ.get(INTERVAL_ENV)
    return parse_interval(env) if env else DEFAULT_INTERVAL


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m07s``, ``2h05m``; ``?`` for unknown."""
    if seconds is None or seconds != seconds or math.isinf(seconds):
        return "?"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _amount(value: float, unit: str) -> str:
    return format_bytes(value) if unit == "B" else f"{value:,.0f}"


class Progress:
    """A long task's progress on stderr: a live line on a terminal, else periodic lines.

    Feed it from the library's callbacks: pass it as ``callback`` (training, evaluation,
    fine-tuning), as a study's ``progress`` (:meth:`study`) or as a download's byte
    callback (:meth:`bytes`); or call :meth:`update` / :meth:`set` directly.

    Args:
        desc: what is running (``pretrain``, ``study``); starts every line.
        total: units to do, if known (may be set later).
        unit: what is counted (``batches``, ``runs``; ``B`` is shown as KiB/MiB).
        interval: seconds between lines off a terminal (default: :func:`progress_interval`).
        live: redraw one line in place (default: whether ``stream`` is a terminal).
        stream: where the live line goes (default stderr); periodic lines go through
            :mod:`logging` so that they carry timestamps and obey ``--log-level``.
        heartbeat: a thread reports at the interval even while no event arrives.
        clock: seconds, monotonic (for tests).
    """

    def __init__(self, desc: str, total: float | None = None, unit: str = "batches", *,
                 interval: float | None = None, live: bool | None = None,
                 stream: IO | None = None, heartbeat: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream or sys.stderr
        self.live = _isatty(self.stream) if live is None else live
        self.interval = progress_interval(interval)
        self.heartbeat, self.clock = heartbeat, clock
        self.done: float = 0
        self.status = ""
        self.eta_hint: float | None = None
        self._eta_at: float | None = None
        self._training = False
        self._lock = threading.RLock()
        self._started_at: float | None = None
        self._last_line = self._last_draw = -math.inf
        self._width = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._announced = False

    # --- feeding it ---------------------------------------------------------------
    def start(self) -> Progress:
        """Start the clock and the heartbeat (idempotent; the first event starts it too).

        The start line itself waits for the first event, or for one interval to pass, so a
        command that refuses its input at once prints only its error.
        """
        with self._lock:
            if self._started_at is not None:
                return self
            self._started_at = self.clock()
            if self.heartbeat:
                self._thread = threading.Thread(target=self._beat, daemon=True,
                                                name=f"progress-{self.desc}")
                self._thread.start()
        return self

    def _announce(self) -> None:
        if self._announced:
            return
        self._announced = True
        if not self.live:
            todo = f" ({_amount(self.total, self.unit)}{self._unit()})" if self.total else ""
            self._log(f"{self.desc}: started{todo}")
            self._last_line = self._started_at if self._started_at is not None else self.clock()

    def update(self, n: float = 1, status: str | None = None) -> None:
        """``n`` more units done."""
        self.set(self.done + n, status=status)

    def set(self, done: float, total: float | None = None, eta: float | None = None,
            status: str | None = None) -> None:
        """The task's state now.

        Args:
            done: units done so far.
            total: units in all (unchanged when None).
            eta: seconds left, when the caller knows better than done/rate.
            status: a short note shown after the numbers (``epoch 2/5, loss 0.41``).
        """
        with self._lock:
            self.start()
            self.done = done
            if total is not None:
                self.total = total
            if eta is not None:
                self.eta_hint, self._eta_at = eta, self.clock()
            if status is not None:
                self.status = status
            self._announce()
            self._tick()

    def note(self, message: str, level: int = logging.INFO) -> None:
        """A log line of its own (an epoch's metrics, a failed run), above the live line."""
        with self._lock:
            self._clear_live()
            logger.log(level, message)
            if self.live and self._started_at is not None and not self._closed:
                self._draw()

    def close(self, ok: bool = True) -> None:
        """Stop the heartbeat and report the end (``done`` or ``stopped``), if the start was."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self._clear_live()
            if self._started_at is None or not self._announced:
                return  # over (or refused) before anything was shown: nothing to end
            elapsed = self.clock() - self._started_at
            rate = self._rate(elapsed)
            word = "done" if ok else "stopped"
            count = self._count() if self.total or self.done else ""
            parts = [f"{self.desc}: {word}", count, f"in {format_duration(elapsed)}"]
            if rate:
                parts.append(f"({rate})")
            self._log(" ".join(p for p in parts if p) + (f"; {self.status}" if self.status else ""))

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)

    # --- adapters for the library's callbacks ----------------------------------------
    def __call__(self, event: ProgressEvent | str, info: Mapping[str, Any] | None = None) -> None:
        """A library event (:mod:`robust_transfer.events`; the old ``(kind, info)`` form too)."""
        event = as_event(event, info)
        if isinstance(event, BatchDone):
            self._training = True
            status = f"epoch {event.epoch}/{event.epochs}" if event.epochs is not None else ""
            if event.loss is not None:
                status += (", " if status else "") + f"loss {event.loss:.3f}"
            self.set((event.epoch - 1) * event.batches + event.batch,
                     event.batches * (event.epochs or 1), status=status)
        elif isinstance(event, EvalBatchDone):
            if self._training:
                of = f"/{event.batches}" if event.batches else ""
                self.set(self.done, status=f"evaluating {event.batch}{of}")
            else:
                self.set(event.batch, event.batches)
        elif isinstance(event, EpochDone):
            self.status = ""  # the evaluation note is over
            self.note(epoch_line(self.desc, event.metrics))
        elif isinstance(event, StepDone):
            self.set(event.done, event.total, status=event.what)

    def study(self, snapshot: Any) -> None:
        """A study's progress snapshot (``robust_transfer.study.StudyProgress``)."""
        last = getattr(snapshot, "last", None)
        if last is not None and last.status != "finished":
            error = (last.error or "?").strip().splitlines()
            self.note(f"run {last.run_id} failed: {error[-1] if error else '?'}", logging.WARNING)
        self.set(snapshot.done + snapshot.failed, snapshot.total, eta=snapshot.eta,
                 status=f"{snapshot.failed} failed, {snapshot.running} running")

    def bytes(self, done: int, total: int | None = None) -> None:
        """A download's byte counts."""
        self.unit = "B"
        self.set(done, total)

    # --- output -----------------------------------------------------------------
    def line(self) -> str:
        """The status line as it would be printed now."""
        with self._lock:
            elapsed = self.clock() - (self._started_at if self._started_at is not None
                                      else self.clock())
            # nothing counted yet and no total (a phase without events): say it is alive
            parts = [self._count() if self.total or self.done else "running"]
            rate = self._rate(elapsed)
            if rate:
                parts.append(rate)
            parts.append(f"{format_duration(elapsed)} elapsed")
            eta = self._eta(elapsed)
            if eta is not None or self.total:
                parts.append(f"ETA {format_duration(eta)}")
            text = f"{self.desc}: " + ", ".join(p for p in parts if p)
            return text + (f"; {self.status}" if self.status else "")

    def _unit(self) -> str:
        return "" if self.unit == "B" else f" {self.unit}"

    def _count(self) -> str:
        done = _amount(self.done, self.unit)
        unit = self._unit()
        if not self.total:
            return f"{done}{unit}"
        share = 100.0 * self.done / self.total
        return f"{done}/{_amount(self.total, self.unit)}{unit} ({share:.0f}%)"

    def _rate(self, elapsed: float) -> str:
        if self.done <= 0 or elapsed <= 0:
            return ""
        per_s = self.done / elapsed
        if self.unit == "B":
            return f"{_amount(per_s, 'B')}/s"
        if per_s >= 1:
            return f"{per_s:,.1f} {self.unit}/s"
        return f"{per_s * 60:,.2f} {self.unit}/min"

    def _eta(self, elapsed: float) -> float | None:
        if self.eta_hint is not None and self._eta_at is not None:
            return max(0.0, self.eta_hint - (self.clock() - self._eta_at))
        if not self.total or self.done <= 0 or elapsed <= 0:
            return None
        return (self.total - self.done) / (self.done / elapsed)

    def _tick(self) -> None:
        now = self.clock()
        if self.live:
            if now - self._last_draw >= LIVE_REDRAW:
                self._draw()
        elif now - self._last_line >= self.interval:
            self._log(self.line())

    def _beat(self) -> None:
        step = min(1.0, self.interval / 4) if not self.live else LIVE_REDRAW * 5
        while not self._stop.wait(step):
            with self._lock:
                if self._closed or self._started_at is None:
                    continue
                if not self._announced:
                    if self.clock() - self._started_at < self.interval:
                        continue
                    self._announce()
                    self._last_line = self.clock()  # the start line is this beat's line
                    continue
                self._tick()

    def _log(self, text: str) -> None:
        self._last_line = self.clock()
        logger.info(text)

    def _draw(self) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        text = self.line()
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)
        self._last_draw = self.clock()

    def _clear_live(self) -> None:
        if self.live and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def epoch_line(desc: str, metrics: EpochMetrics) -> str:
    """One epoch's metrics as a log line: ``finetune epoch 3: lr 0.1 train loss ...``."""
    msg = (f"{desc} epoch {metrics.epoch}: lr {metrics.lr:.4g} "
           f"train loss {metrics.train_loss:.4f} acc {metrics.train_acc:.4f}")
    if not math.isnan(metrics.test_acc):
        msg += f" | test acc {metrics.test_acc:.4f}"
    if not math.isnan(metrics.robust_acc):
        msg += f" robust acc {metrics.robust_acc:.4f}"
    return msg
