"""Pool workers die with their driver; a dead worker fails only its own run; a study
killed five times still ends with every run recorded exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_support import PID_DIR_ENV, SECONDS_ENV, suicidal_run, timed_run
from study_support import make_sources, write_spec

from robust_transfer.errors import RobustTransferError
from robust_transfer.study import load_results, run_study, study_status

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BODY = """\
    train_images: [30]
    unfrozen_blocks: [0]
    epochs: 2
    seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return make_sources(tmp_path_factory.mktemp("rel"))


@pytest.fixture
def spec(tmp_path, sources):
    return write_spec(tmp_path, sources, body=BODY)  # 20 runs


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by a container's init, counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_a_killed_worker_fails_only_its_own_run(sources, tmp_path):
    spec = write_spec(tmp_path, sources, body=BODY.replace("4, 5, 6, 7, 8, 9", "4"))
    summary = run_study(spec, tmp_path / "s", workers=2, run_fn=suicidal_run)
    assert (summary.ran, summary.failed, summary.finished) == (10, 1, 9)
    (run_id, error), = summary.failures
    assert "SIGKILL" in error and "--retry-failed" in error
    runs, _ = load_results(tmp_path / "s")
    assert len(runs) == 9 and run_id not in set(runs["run_id"])
    # the run in flight beside the killed one finished in a worker that lived on
    assert runs["run_id"].is_unique


def _driver(spec: Path, out: Path, pid_dir: Path, workers: int = 2) -> subprocess.Popen:
    code = ("import sys; sys.path.insert(0, sys.argv[3]); from reliability_support import timed_run; "
            "from robust_transfer.study import run_study; "
            f"run_study(sys.argv[1], sys.argv[2], workers={workers}, run_fn=timed_run)")
    env = {**os.environ, PID_DIR_ENV: str(pid_dir), SECONDS_ENV: "0.4",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code, str(spec), str(out), str(HERE)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _finished(out: Path) -> int:
    try:
        return study_status(out).finished
    except (sqlite3.Error, RobustTransferError):
        return 0  # the store is being created


def _still_alive(pids: list[int], after: float) -> list[int]:
    deadline = time.monotonic() + after
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.mark.slow
def test_workers_die_with_a_killed_driver_and_five_kills_lose_no_run(spec, tmp_path):
    out, orphans, kills = tmp_path / "killed", [], 0
    for kill in range(5):
        pid_dir = tmp_path / f"pids{kill}"
        pid_dir.mkdir()
        before = _finished(out)
        proc = _driver(spec, out, pid_dir)
        deadline = time.monotonic() + 120
        try:  # kill once both workers run and this driver has recorded a run
            while not (_finished(out) > before and len(list(pid_dir.iterdir())) >= 2):
                assert proc.poll() is None, "the study ended before it could be killed"
                assert time.monotonic() < deadline, "the driver made no progress"
                time.sleep(0.05)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        kills += 1
        orphans += _still_alive([int(p.name) for p in pid_dir.iterdir()], after=5.0)
    assert kills == 5 and orphans == [], f"workers outlived their driver: {orphans}"
    assert _finished(out) < 20, "every kill must land mid-study"
    with sqlite3.connect(out / "study.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    resumed = run_study(spec, out, workers=2, run_fn=timed_run)
    assert resumed.failed == 0 and resumed.store_finished == 20
    runs, epochs = load_results(out)
    assert len(runs) == 20 and runs["run_id"].is_unique
    assert len(epochs) == 40 and epochs.groupby("run_id").size().eq(2).all()
    run_study(spec, tmp_path / "clean", run_fn=timed_run)
    clean, _ = load_results(tmp_path / "clean")
    assert clean.set_index("run_id")["test_acc"].equals(runs.set_index("run_id")["test_acc"])


def test_a_rerun_that_leaves_failed_runs_exits_1_and_says_how_many(sources, tmp_path, capsys):
    from reliability_support import seed0_fails

    from robust_transfer.cli import main

    spec = write_spec(tmp_path, sources, body=BODY.replace(", 4, 5, 6, 7, 8, 9", ""))  # 8 runs
    first = run_study(spec, tmp_path / "s", run_fn=seed0_fails)
    assert (first.finished, first.failed) == (6, 2)
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "s"), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "ran 0 run(s)" in captured.out and "skipped 8" in captured.out
    assert "2 run(s) failed" in captured.err and "--retry-failed" in captured.err


def _files(folder: Path) -> dict[str, bytes]:
    """The study's data files, byte for byte (the lock file's mtime may change on a probe)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name.startswith("study.db")}


def test_repair_of_a_killed_study_salvages_every_finished_run_and_writes_nothing_there(
        spec, tmp_path, capsys):
    from robust_transfer.cli import main

    out, pid_dir = tmp_path / "killed", tmp_path / "pids"
    pid_dir.mkdir()
    proc = _driver(spec, out, pid_dir, workers=1)
    deadline = time.monotonic() + 120
    try:  # SIGKILL once a few runs are recorded: they sit in study.db-wal, not yet in study.db
        while _finished(out) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "no progress to kill"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = study_status(out).finished
    assert 3 <= finished < 20 and (out / "study.db-wal").stat().st_size > 0
    before = _files(out)
    assert main(["study", "repair", str(out), "--out", str(tmp_path / "new")]) == 0
    assert f"salvaged {finished} finished run(s)" in capsys.readouterr().out
    assert _files(out) == before, "repair wrote into the study it salvages"
    runs, epochs = load_results(tmp_path / "new")
    killed_runs, _ = load_results(out)
    assert set(runs["run_id"]) == set(killed_runs["run_id"]) and len(epochs) == 2 * finished
    assert runs.set_index("run_id")["test_acc"].equals(killed_runs.set_index("run_id")["test_acc"])
