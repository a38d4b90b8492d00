"""The results store read on read-only storage, and damaged stores: one line, and repair.

Read-only storage is simulated honestly: the tests run as root in CI, where ``chmod a-w``
stops nothing, so the read-only cases run the CLI in a private mount namespace where the
study folder is bind-mounted read-only (``unshare --user --map-root-user --mount``, or
``unshare --mount`` as root); writes there fail with EROFS exactly as on a read-only disk.
Where namespaces are not allowed those cases skip, and the in-process checks remain: the
URI a reader uses, and that reading leaves no file behind.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_support import timed_run
from study_support import make_sources, write_spec

from robust_transfer.cli import main
from robust_transfer.errors import ConfigError
from robust_transfer.study import load_results, run_study, study_status
from robust_transfer.study import store as store_mod
from robust_transfer.study.store import StoreDamagedError, StudyStore, repair_store

REPO = Path(__file__).resolve().parents[2]
BODY = """\
    train_images: [30, 60]
    unfrozen_blocks: [0]
    epochs: 2
    seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """  # 40 runs


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished 40-run study (stand-in runs), copied by each test that changes it."""
    folder = tmp_path_factory.mktemp("store")
    spec = write_spec(folder, make_sources(folder), body=BODY)
    os.environ["RT_TEST_RUN_SECONDS"] = "0"
    try:
        assert run_study(spec, folder / "study", run_fn=timed_run).finished == 40
    finally:
        del os.environ["RT_TEST_RUN_SECONDS"]
    return spec, folder / "study"


def _copy(study_dir: Path, where: Path) -> Path:
    return Path(shutil.copytree(study_dir, where))


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- read-only -----------------------------------------------------------------------
def test_a_closed_store_is_left_without_wal_files(study):
    _, study_dir = study
    assert not any(p.name.endswith(("-wal", "-shm")) for p in study_dir.iterdir())


def test_reading_creates_no_file(study, tmp_path, capsys):
    study_dir = _copy(study[1], tmp_path / "s")
    before = _listing(study_dir)
    assert main(["study", "status", str(study_dir)]) == 0
    assert main(["study", "export", str(study_dir), "--out", str(tmp_path / "x")]) == 0
    assert main(["analyze", str(study_dir), "--out", str(tmp_path / "a"), "--no-figures"]) == 0
    assert len(load_results(study_dir)[0]) == 40
    capsys.readouterr()
    assert _listing(study_dir) == before


def test_readers_use_mode_ro_and_immutable_where_the_folder_is_read_only(study, tmp_path,
                                                                         monkeypatch):
    study_dir = _copy(study[1], tmp_path / "s")
    with StudyStore(study_dir, readonly=True) as store:
        assert "mode=ro" in store.uri and "immutable" not in store.uri
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.conn.execute("DELETE FROM runs")
    with sqlite3.connect(study_dir / "study.db") as conn:  # as an older version left it
        conn.execute("PRAGMA journal_mode=WAL")
    monkeypatch.setattr(store_mod, "_writable", lambda folder: False)
    with StudyStore(study_dir, readonly=True) as store:
        assert store.uri.endswith("mode=ro&immutable=1")
        assert store.status().finished == 40
    assert not any(p.name.endswith(("-wal", "-shm")) for p in study_dir.iterdir())


def _readonly_namespace() -> list[str] | None:
    for prefix in (["unshare", "--user", "--map-root-user", "--mount"], ["unshare", "--mount"]):
        probe = subprocess.run([*prefix, "true"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


def _cli_on_readonly(folder: Path, *argv: str) -> subprocess.CompletedProcess:
    prefix = _readonly_namespace()
    if prefix is None or shutil.which("mount") is None:
        pytest.skip("no mount namespaces here to make a read-only bind mount")
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && '
              'touch "$0/probe" 2>/dev/null && exit 99; exec "$@"')
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([*prefix, "sh", "-c", script, str(folder), str(folder),
                           sys.executable, "-m", "robust_transfer", *argv],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_status_export_and_analyze_work_on_a_read_only_disk(study, tmp_path):
    study_dir = _copy(study[1], tmp_path / "s")
    with sqlite3.connect(study_dir / "study.db") as conn:  # WAL mode, as an older version left it
        conn.execute("PRAGMA journal_mode=WAL")
    before = _listing(study_dir)
    status = _cli_on_readonly(study_dir, "study", "status", str(study_dir))
    assert status.returncode == 0, status.stderr
    assert "40 runs: 40 finished" in status.stdout
    export = _cli_on_readonly(study_dir, "study", "export", str(study_dir),
                              "--out", str(tmp_path / "x"))
    assert export.returncode == 0, export.stderr
    assert (tmp_path / "x" / "runs.csv").read_text().count("\n") == 41
    analyze = _cli_on_readonly(study_dir, "analyze", str(study_dir), "--out", str(tmp_path / "a"),
                               "--no-figures")
    assert analyze.returncode == 0, analyze.stderr
    # the default export folder lies on the read-only disk: one line, nothing else
    refused = _cli_on_readonly(study_dir, "study", "export", str(study_dir))
    assert refused.returncode == 2 and "writable" in _one_error_line(refused.stderr)
    assert _listing(study_dir) == before


# --- damage --------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _zero_page(path: Path) -> None:
    """Overwrite the page in the middle of the file (a bad sector)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek((size // 4096 // 2) * 4096)
        f.write(b"\xff" * 4096)


def _few_bytes(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:50])


@pytest.mark.parametrize("damage", [_truncate, _garbage, _zero_page, _few_bytes])
@pytest.mark.parametrize("argv", [["study", "status", "{d}"], ["study", "export", "{d}"],
                                  ["analyze", "{d}", "--no-figures"],
                                  ["study", "run", "{spec}", "--out", "{d}"]])
def test_a_damaged_store_is_one_line_naming_the_file_and_the_repair(study, tmp_path, capsys,
                                                                    damage, argv):
    spec, original = study
    study_dir = _copy(original, tmp_path / "s")
    damage(study_dir / "study.db")
    before = _listing(study_dir)
    code = main([a.format(d=study_dir, spec=spec) for a in argv])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert str(study_dir / "study.db") in line and "damaged" in line and "study repair" in line
    if argv[1] != "run":  # the driver may (re)write its lock and pid files, nothing else
        assert _listing(study_dir) == before


def _bad_leaf(path: Path, table: str) -> int:
    """Overwrite one leaf page of ``table`` (a bad sector); returns the rows it held."""
    with sqlite3.connect(path) as conn:
        try:
            page, cells = conn.execute("SELECT pageno, ncell FROM dbstat WHERE name=? AND "
                                       "pagetype='leaf' ORDER BY pageno LIMIT 1", (table,)).fetchone()
        except sqlite3.OperationalError:
            pytest.skip("this SQLite lacks the dbstat table")
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    with open(path, "r+b") as f:
        f.seek((page - 1) * size)
        f.write(b"\xff" * size)
    return cells


def test_repair_salvages_finished_runs_and_a_rerun_completes_the_study(study, tmp_path, capsys):
    spec, original = study
    study_dir = _copy(original, tmp_path / "s")
    lost = _bad_leaf(study_dir / "study.db", "runs")
    assert main(["study", "repair", str(study_dir), "--out", str(tmp_path / "new")]) == 0
    assert f"salvaged {40 - lost} finished run(s)" in capsys.readouterr().out
    salvaged = study_status(tmp_path / "new").finished
    assert 0 < lost < 40 and salvaged == 40 - lost
    os.environ["RT_TEST_RUN_SECONDS"] = "0"
    try:
        rerun = run_study(spec, tmp_path / "new", run_fn=timed_run)
    finally:
        del os.environ["RT_TEST_RUN_SECONDS"]
    assert (rerun.skipped, rerun.ran, rerun.store_finished) == (salvaged, 40 - salvaged, 40)
    runs, epochs = load_results(tmp_path / "new")
    ref, ref_epochs = load_results(original)
    assert runs["run_id"].is_unique and len(epochs) == 80
    assert runs.set_index("run_id")["test_acc"].equals(ref.set_index("run_id")["test_acc"])


def test_runs_whose_epochs_are_unreadable_are_left_out(study, tmp_path):
    study_dir = _copy(study[1], tmp_path / "s")
    lost_epoch_rows = _bad_leaf(study_dir / "study.db", "epochs")
    report = repair_store(study_dir, tmp_path / "new")
    assert report.dropped >= lost_epoch_rows // 2 and report.finished == 40 - report.dropped
    _, epochs = load_results(tmp_path / "new")
    assert len(epochs) == 2 * report.finished and epochs.groupby("run_id").size().eq(2).all()


def test_repair_refuses_garbage_and_a_used_out(study, tmp_path, capsys):
    study_dir = _copy(study[1], tmp_path / "s")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").touch()
    assert main(["study", "repair", str(study_dir), "--out", str(tmp_path / "used")]) == 2
    assert "not an empty folder" in _one_error_line(capsys.readouterr().err)
    _garbage(study_dir / "study.db")
    assert main(["study", "repair", str(study_dir), "--out", str(tmp_path / "new")]) == 2
    assert "nothing in" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists()


def test_damage_found_by_the_library_is_a_store_damaged_error(study, tmp_path):
    study_dir = _copy(study[1], tmp_path / "s")
    _truncate(study_dir / "study.db")
    with pytest.raises(StoreDamagedError, match="damaged"):
        load_results(study_dir)
    with pytest.raises(ConfigError, match="not an empty folder"):
        repair_store(study_dir, study_dir)


def test_a_source_rewritten_with_its_header_keeps_its_study(tmp_path, monkeypatch):
    import json

    from safetensors.torch import load_file, save_file

    from robust_transfer.errors import RobustTransferError
    from robust_transfer.models.checkpoints import embed_header, sha256_file

    sources = make_sources(tmp_path)
    for weights in sources.values():  # as written before headers held the metadata
        save_file(load_file(str(weights)), str(weights), metadata={"format": "robust_transfer"})
        meta_path = weights.with_suffix(".json")
        meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()),
                                         "sha256": sha256_file(weights)}))
    spec = write_spec(tmp_path, sources, body=BODY)
    monkeypatch.setenv("RT_TEST_RUN_SECONDS", "0")
    assert run_study(spec, tmp_path / "s", run_fn=timed_run).finished == 40
    embed_header(sources["robust"])
    again = run_study(spec, tmp_path / "s", run_fn=timed_run)
    assert (again.skipped, again.ran) == (40, 0)
    # other weights under the same label are still refused
    weights = sources["natural"]
    save_file({k: v + 1 for k, v in load_file(str(weights)).items()}, str(weights),
              metadata={"format": "robust_transfer"})
    meta_path = weights.with_suffix(".json")
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()),
                                     "sha256": sha256_file(weights)}))
    with pytest.raises(RobustTransferError, match="restore that checkpoint"):
        run_study(spec, tmp_path / "s", run_fn=timed_run)


# --- a full disk ---------------------------------------------------------------------
def _sixty_epochs(task, ctx):
    """A stand-in run with a long history: each record needs about one new page."""
    from dataclasses import replace

    outcome = timed_run(task, ctx)
    return replace(outcome, history=tuple({**outcome.history[-1], "epoch": e} for e in range(1, 61)))


def test_a_full_disk_mid_study_is_one_line_and_a_rerun_loses_nothing(tmp_path, capsys, monkeypatch):
    """SQLite's page limit raises exactly what a full disk raises (SQLITE_FULL, 'database or
    disk is full'); it is set once three runs are recorded, so the fourth cannot be."""
    import functools

    import robust_transfer.study as study_api

    spec = write_spec(tmp_path, make_sources(tmp_path))  # 8 runs
    monkeypatch.setenv("RT_TEST_RUN_SECONDS", "0")
    monkeypatch.setattr(study_api, "run_study", functools.partial(run_study, run_fn=_sixty_epochs))
    real_record = StudyStore.record

    def filling_record(self, outcome):
        real_record(self, outcome)
        if self.status().finished == 3:
            pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
            self.conn.execute(f"PRAGMA max_page_count={pages}")

    monkeypatch.setattr(StudyStore, "record", filling_record)
    out = tmp_path / "s"
    code = main(["study", "run", str(spec), "--out", str(out), "--quiet"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "disk is full" in line and "rerun the same command" in line
    monkeypatch.setattr(StudyStore, "record", real_record)
    assert study_status(out).finished == 3
    with sqlite3.connect(out / "study.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert main(["study", "run", str(spec), "--out", str(out), "--quiet"]) == 0
    runs, epochs = load_results(out)
    assert len(runs) == 8 and runs["run_id"].is_unique and len(epochs) == 8 * 60


def test_repair_refuses_a_study_a_live_driver_is_writing(study, tmp_path):
    from robust_transfer.study.lock import DriverLock

    study_dir = _copy(study[1], tmp_path / "s")
    with DriverLock(study_dir), pytest.raises(ConfigError, match="live driver"):
        repair_store(study_dir, tmp_path / "new")
    assert not (tmp_path / "new").exists()
