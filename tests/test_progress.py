"""Progress lines for clusters, --log-level, per-epoch metrics.csv and TensorBoard scalars."""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robust_transfer.cli import main
from robust_transfer.engine.training import (
    METRICS_COLUMNS,
    FitOptions,
    MetricsCSV,
    OptimConfig,
    TensorBoardWriter,
    TensorLoader,
    combine_callbacks,
    evaluate,
    fit,
)
from robust_transfer.errors import ConfigError
from robust_transfer.events import (
    BatchDone,
    EpochDone,
    EpochMetrics,
    EvalBatchDone,
    StepDone,
    as_event,
    event_info,
    legacy_listener,
)
from robust_transfer.progress import Progress, configure_logging, format_duration
from robust_transfer.study.runner import StudyProgress
from robust_transfer.study.store import RunOutcome

REPO = Path(__file__).resolve().parents[1]
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log():
    """Package log records into a buffer (as the CLI sets it up off a terminal)."""
    buf = io.StringIO()
    configure_logging("info", stream=buf)
    yield buf
    configure_logging("info")


def test_lines_at_start_every_interval_and_end_with_rate_and_eta(log):
    clock = FakeClock()
    p = Progress("job", total=40, interval=10, live=False, heartbeat=False, clock=clock)
    p.start()
    for t, done in [(2, 2), (5, 5), (10, 10), (15, 15), (21, 21), (40, 40)]:
        clock.now = 1000.0 + t
        p.set(done)
    p.close()
    lines = log.getvalue().splitlines()
    assert all(re.match(STAMP, line) for line in lines), lines
    text = [line[20:] for line in lines]
    # start; t=10 and t=21 are the first updates at least 10 s after the previous line;
    # t=40 too (19 s later); then the end line
    assert text[0] == "job: started (40 batches)"
    assert text[1] == "job: 10/40 batches (25%), 1.0 batches/s, 10s elapsed, ETA 30s"
    assert text[2] == "job: 21/40 batches (52%), 1.0 batches/s, 21s elapsed, ETA 19s"
    assert text[3] == "job: 40/40 batches (100%), 1.0 batches/s, 40s elapsed, ETA 0s"
    assert text[4] == "job: done 40/40 batches (100%) in 40s (1.0 batches/s)"
    assert len(text) == 5


def test_heartbeat_reports_while_no_event_arrives(log):
    with Progress("quiet", total=5, interval=0.05, live=False) as p:
        p.set(1)
        time.sleep(0.5)
    lines = log.getvalue().splitlines()
    beats = [line for line in lines if "quiet: 1/5 batches" in line]
    assert len(beats) >= 3, lines  # ~10 possible in 0.5 s; a loaded machine gives fewer
    assert re.search(r", [\d.]+ batches/(s|min), \d+s elapsed, ETA \d+s$", beats[-1]), beats
    assert re.match(STAMP + r"quiet: done 1/5 batches \(20%\) in \d+s \(", lines[-1]), lines


def test_a_phase_without_events_still_reports_it_is_alive(log):
    clock = FakeClock()
    p = Progress("influence", unit="models", interval=5, live=False, heartbeat=False,
                 clock=clock).start()
    clock.now += 61
    p.set(0)  # what the heartbeat thread does at its tick, here on the fake clock
    p.close()
    assert [line[20:] for line in log.getvalue().splitlines()] == [
        "influence: started", "influence: running, 1m01s elapsed", "influence: done in 1m01s"]


def test_refused_at_once_prints_nothing_but_the_error(log):
    with pytest.raises(ConfigError):
        with Progress("pretrain", interval=30):
            raise ConfigError("unknown dataset")
    assert log.getvalue() == ""


def test_live_line_is_redrawn_in_place_and_notes_go_above_it(log):
    clock = FakeClock()
    tty = io.StringIO()
    p = Progress("fit", total=4, live=True, stream=tty, heartbeat=False, clock=clock).start()
    for i in range(1, 5):
        clock.now += 1
        p.set(i, status=f"loss {1 / i:.2f}")
    p.note("fit epoch 1: done")
    p.close()
    drawn = tty.getvalue()
    assert "\n" not in drawn and drawn.count("\r") >= 4
    assert "fit: 4/4 batches (100%), 1.0 batches/s, 4s elapsed, ETA 0s; loss 0.25" in drawn
    # off the live line: only the note and the end line, nothing per update
    assert [line[20:] for line in log.getvalue().splitlines()] == [
        "fit epoch 1: done", "fit: done 4/4 batches (100%) in 4s (1.0 batches/s); loss 0.25"]


def test_study_snapshots_use_the_runner_eta_and_report_failures(log):
    clock = FakeClock()
    p = Progress("study", unit="runs", interval=1, live=False, heartbeat=False, clock=clock)
    failed = RunOutcome("abc123", "failed", 0.0, 1.0, error="Traceback...\nValueError: boom")
    p.study(StudyProgress(0, 0, 2, 8, 10, 0.0, None))
    clock.now += 120
    p.study(StudyProgress(3, 1, 2, 4, 10, 120.0, 300.0, failed))
    p.close()
    lines = [line[20:] for line in log.getvalue().splitlines()]
    assert lines[1] == "warning: run abc123 failed: ValueError: boom"
    assert lines[2] == ("study: 4/10 runs (40%), 2.00 runs/min, 2m00s elapsed, ETA 5m00s; "
                        "1 failed, 2 running")
    assert lines[3] == "study: done 4/10 runs (40%) in 2m00s (2.00 runs/min); 1 failed, 2 running"


def test_byte_counts_are_shown_in_binary_units(log):
    clock = FakeClock()
    p = Progress("download", live=False, heartbeat=False, interval=1, clock=clock).start()
    clock.now += 2
    p.bytes(3 * 2**20, 12 * 2**20)
    assert "download: 3.0 MiB/12.0 MiB (25%), 1.5 MiB/s, 2s elapsed, ETA 6s" in log.getvalue()


def test_log_level_warning_silences_progress_but_not_warnings():
    buf, tty = io.StringIO(), io.StringIO()
    configure_logging("warning", stream=buf)
    try:
        with Progress("x", total=2, live=False, heartbeat=False, interval=1e-9) as p:
            p.set(1)
            p.note("gone")
            p.note("kept", logging.WARNING)
        with Progress("y", total=2, live=True, stream=tty, heartbeat=False) as p:
            p.set(1)
    finally:
        configure_logging("info")
    assert [line[20:] for line in buf.getvalue().splitlines()] == ["warning: kept"]
    assert tty.getvalue() == ""


def test_bad_levels_and_intervals_are_refused(capsys):
    with pytest.raises(ConfigError, match="unknown log level 'loud'"):
        configure_logging("loud")
    with pytest.raises(ConfigError, match="must be > 0"):
        Progress("x", interval=0)
    assert main(["--progress-interval", "-1", "study", "presets"]) == 2
    assert capsys.readouterr().err.strip() == ("error: progress interval must be > 0 seconds, "
                                               "got '-1.0'")
    assert format_duration(3725) == "1h02m" and format_duration(None) == "?"


def _shown(events) -> list[str]:
    """The log lines a Progress off a terminal prints for ``events`` (one second apart)."""
    buf, clock = io.StringIO(), FakeClock()
    configure_logging("info", stream=buf)
    try:
        with Progress("fit", interval=1, live=False, heartbeat=False, clock=clock) as p:
            for event in events:
                clock.now += 1
                p(*event) if isinstance(event, tuple) else p(event)
    finally:
        configure_logging("info")
    return [line[20:] for line in buf.getvalue().splitlines()]


METRICS = EpochMetrics(1, 0.1, 0.5, 0.75, test_loss=0.6, test_acc=0.7)
TYPED = [BatchDone(1, 2, 1, 2, loss=0.25), BatchDone(2, 2, 1, 2, loss=0.125), EvalBatchDone(1, 1),
         EpochDone(METRICS), StepDone(5, 10, "scored")]


def test_progress_shows_typed_events_and_the_old_form_alike():
    """The transition: a caller still writing ``callback("step", {...})`` gets the same lines."""
    old = [(e.kind, event_info(e)) for e in TYPED]
    assert old[0] == ("batch", {"batch": 1, "batches": 2, "epoch": 1, "epochs": 2, "loss": 0.25})
    assert old[3][1] == METRICS.to_dict() and old[4] == ("step", {"done": 5, "total": 10,
                                                                  "what": "scored"})
    lines = _shown(TYPED)
    assert lines == _shown(old)
    assert lines[1] == "fit: 1/4 batches (25%), 1.0 batches/s, 1s elapsed, ETA 3s; epoch 1/2, loss 0.250"
    assert "fit epoch 1: lr 0.1 train loss 0.5000 acc 0.7500 | test acc 0.7000" in lines
    assert lines[-2].endswith("ETA 5s; scored") and lines[-1].startswith("fit: done 5/10")


def test_events_convert_between_forms_and_refuse_unknown_kinds():
    assert [as_event(e.kind, event_info(e)) for e in TYPED] == TYPED
    assert as_event(TYPED[0]) is TYPED[0]
    seen = []
    legacy_listener(lambda kind, info: seen.append((kind, info)))(StepDone(3))
    assert seen == [("step", {"done": 3})]
    with pytest.raises(ValueError, match="unknown progress event 'batches'; valid: batch, eval"):
        as_event("batches", {})
    with pytest.raises(ValueError, match="takes no info"):
        as_event(StepDone(1), {"done": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        TYPED[-1].done = 6  # type: ignore[misc]


def test_evaluate_reports_every_batch(digits_net, digits_test, digits_policy):
    events = []
    loader = TensorLoader(digits_test.images[:100], digits_test.labels[:100], 32,
                          transform=digits_policy.prepare)
    evaluate(digits_net, loader, device="cpu", callback=events.append)
    assert events == [EvalBatchDone(b, 4) for b in range(1, 5)]


def _tiny_fit(digits_net, digits_train, digits_test, digits_policy, callback, epochs=3):
    model = copy.deepcopy(digits_net)
    train = TensorLoader(digits_train.images[:64], digits_train.labels[:64], 32, shuffle=True,
                         transform=digits_policy.prepare)
    test = TensorLoader(digits_test.images[:64], digits_test.labels[:64], 64,
                        transform=digits_policy.prepare)
    options = FitOptions(epochs=epochs, optim=OptimConfig(lr=0.05), eval_every=2, device="cpu")
    return fit(model, train, test, options, callback)


def test_metrics_csv_rows_and_columns_match_the_history(tmp_path, digits_net, digits_train,
                                                        digits_test, digits_policy):
    path = tmp_path / "sub" / "metrics.csv"
    seen = []
    history = _tiny_fit(digits_net, digits_train, digits_test, digits_policy,
                        combine_callbacks(MetricsCSV(path), None, seen.append))
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == METRICS_COLUMNS == tuple(history[0].to_dict())
    assert METRICS_COLUMNS[:8] == ("epoch", "lr", "train_loss", "train_acc", "test_loss",
                                   "test_acc", "robust_acc", "seconds")
    assert len(rows) == len(history) == 3
    for row, h in zip(rows, history, strict=True):
        for key, value in h.to_dict().items():
            cell = float(row[key]) if row[key] else math.nan
            assert cell == value or (math.isnan(cell) and math.isnan(value)), (key, row, h)
    assert rows[0]["test_acc"] == "" and rows[1]["test_acc"] != ""  # eval_every=2, and the last
    batches = [e for e in seen if isinstance(e, BatchDone)]
    assert [(e.epoch, e.batch) for e in batches] == [(e, b) for e in (1, 2, 3) for b in (1, 2)]
    assert {e.batches for e in batches} == {2} and {e.epochs for e in batches} == {3}
    assert sum(isinstance(e, EvalBatchDone) for e in seen) == 2  # epochs 2 and 3, one batch each
    assert [e.metrics for e in seen if isinstance(e, EpochDone)] == history


def test_tensorboard_scalars_match_the_history(tmp_path, digits_net, digits_train, digits_test,
                                               digits_policy):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = TensorBoardWriter(tmp_path / "tb", "finetune")
    history = _tiny_fit(digits_net, digits_train, digits_test, digits_policy, writer, epochs=2)
    writer.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    acc = [(s.step, s.value) for s in events.Scalars("finetune/train_acc")]
    assert acc == [(h.epoch, pytest.approx(h.train_acc)) for h in history]
    assert [s.step for s in events.Scalars("finetune/test_acc")] == [2]
    assert len(events.Scalars("finetune/batch_loss")) == 4
    assert "finetune/robust_acc" not in events.Tags()["scalars"]  # NaN: never measured


def test_tensorboard_missing_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match="needs the tensorboard package: pip install"):
        TensorBoardWriter(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()


def test_cli_finetune_writes_metrics_csv_beside_its_output(tmp_path, capsys):
    out = tmp_path / "ft"
    code = main(["finetune", "fmnist-natural", "--target", "digits", "--n", "50", "--epochs",
                 "2", "--batch-size", "25", "--device", "cpu", "--json", "--out", str(out),
                 "--tensorboard", str(tmp_path / "tb")])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1
    meta = json.loads((tmp_path / "ft.json").read_text())
    with open(tmp_path / "ft.metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[-1]["test_acc"]) == pytest.approx(summary["test_acc"])
    assert meta["test_acc"] == summary["test_acc"]


def test_cli_off_a_terminal_prints_periodic_lines_with_rate_and_eta(tmp_path):
    """``evaluate`` with stderr in a pipe (not a TTY) and a 0.02 s interval."""
    # one torch thread: on a shared 2-core machine more threads ran many times slower
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "robust_transfer", "--progress-interval", "0.02", "evaluate",
         "fmnist-natural", "--images", "150", "--batch-size", "10", "--eps", "0.1",
         "--steps", "5", "--device", "cpu"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert all(re.match(STAMP, line) for line in lines), lines[:5]
    pgd = [line for line in lines if "evaluate l2 eps 0.1 PGD-5:" in line]
    assert pgd[0].endswith("evaluate l2 eps 0.1 PGD-5: started")
    assert re.search(r"evaluate l2 eps 0\.1 PGD-5: done 15/15 batches \(100%\) in \w+ "
                     r"\([\d.]+ batches/(s|min)\)$", pgd[-1])
    periodic = [line for line in pgd[1:-1]
                if re.search(r"\d+/15 batches \(\d+%\), [\d.]+ batches/(s|min), \w+ elapsed, "
                             r"ETA \w+$", line)]
    assert len(periodic) >= 2, pgd  # PGD-5 on 150 images takes well over 0.04 s
    assert "clean" in done.stdout and "PGD-5" in done.stdout


def test_cli_tensorboard_missing_is_one_line_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code = main(["finetune", "fmnist-natural", "--n", "50", "--epochs", "1", "--device", "cpu",
                 "--out", str(tmp_path / "ft"), "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --tensorboard needs the tensorboard package")
    assert list(tmp_path.iterdir()) == []
