"""The results store of a study: one SQLite database in WAL mode, ``<study>/study.db``.

One process writes it (the study driver, which holds ``<study>/driver.lock``); any number
may read it while it runs. A finished or failed run is written in one transaction, so a
study killed at any moment (SIGKILL included) leaves every run either fully recorded or
not at all, and a restart reruns exactly the runs that are not finished.

Schema (version 2; the recipe columns are those of
:func:`robust_transfer.engine.recipe.store_columns`)::

    meta(key TEXT PRIMARY KEY, value TEXT)         -- schema_version, created_at
    specs(spec_id INTEGER PRIMARY KEY, added_at REAL, run_set TEXT, n_runs INTEGER,
          name TEXT, text TEXT)                     -- every spec run into the directory
    sources(label TEXT PRIMARY KEY, model TEXT, path TEXT, sha256 TEXT, arch TEXT,
            n_blocks INTEGER, eps REAL, norm TEXT)  -- pinned when first used
    runs(run_id TEXT PRIMARY KEY,                   -- sha256 of config, 16 hex digits
         spec_id INTEGER,                           -- the spec that first planned it
         config TEXT,                               -- the resolved config, canonical JSON
         source TEXT, source_eps REAL, source_norm TEXT, target TEXT,
         n_label TEXT,                              -- "100" or "all"
         n INTEGER,                                 -- images used (NULL until finished)
         unfrozen_blocks TEXT, epochs INTEGER, seed INTEGER,
         lr REAL, momentum REAL, weight_decay REAL, schedule TEXT, batch_size INTEGER,
         augment TEXT, resolution INTEGER, head_init TEXT, eval_every INTEGER,
         status TEXT,                               -- pending | running | finished | failed
         attempts INTEGER,                          -- times started
         test_acc REAL, test_loss REAL, train_acc REAL, train_loss REAL,
         seconds REAL, started_at REAL, finished_at REAL,   -- unix times
         device TEXT, host TEXT, worker TEXT, cached_prefix INTEGER,
         error TEXT,                                -- traceback of a failed run
         val_acc REAL, robust_acc REAL)             -- version 2
    epochs(run_id TEXT, epoch INTEGER,              -- 1-based; PRIMARY KEY (run_id, epoch)
           lr REAL, train_loss REAL, train_acc REAL,
           test_loss REAL, test_acc REAL,           -- NULL on epochs not evaluated
           seconds REAL,
           val_loss REAL, val_acc REAL, robust_acc REAL)  -- version 2

``running`` rows left by a driver that died are treated as not started.

Readers never write. The driver leaves the database in rollback-journal mode when it
closes (WAL only while it runs), so a reader opening it ``mode=ro`` creates no ``-wal`` or
``-shm`` files; on a folder that cannot be written, a database with no pending WAL is
opened ``immutable=1`` (SQLite then needs no ``-shm``). Every open checks the file
(``PRAGMA quick_check``): a damaged store is one :class:`StoreDamagedError` line, and
:func:`repair_store` salvages its finished runs into a new store.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robust_transfer.engine import recipe as recipe_fields
from robust_transfer.errors import ConfigError, RobustTransferError

SCHEMA_VERSION = 2  # 2: validation and robust accuracy columns (added to version-1 stores on open)
DB_NAME = "study.db"
_SQLITE_MAGIC = b"SQLite format 3\x00"
# the recipe fields with a column, and their SQL types: from the recipe's field specs
_RECIPE_SQL = recipe_fields.store_columns()
RECIPE_COLUMNS = tuple(_RECIPE_SQL)
# the columns every analysed run has (the analysis' frame contract) and their types; the
# analysis checks frames of other code against the same table
RUN_TYPES: dict[str, type] = {
    "run_id": str, "source": str, "source_eps": float, "source_norm": str, "target": str,
    "n": int, "n_label": str, "unfrozen_blocks": str, "epochs": int, "seed": int,
    "test_acc": float}
RESULT_COLUMNS = ("n", "status", "test_acc", "test_loss", "train_acc", "train_loss", "seconds",
                  "started_at", "finished_at", "device", "host", "worker", "cached_prefix", "error",
                  "val_acc", "robust_acc")
EPOCH_COLUMNS = ("lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds",
                 "val_loss", "val_acc", "robust_acc")
# columns added by schema version 2: (table, column), appended to older stores on open
_V2_COLUMNS = (("runs", "val_acc"), ("runs", "robust_acc"), ("epochs", "val_loss"),
               ("epochs", "val_acc"), ("epochs", "robust_acc"))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS specs (spec_id INTEGER PRIMARY KEY, added_at REAL, run_set TEXT,
    n_runs INTEGER, name TEXT, text TEXT);
CREATE TABLE IF NOT EXISTS sources (label TEXT PRIMARY KEY, model TEXT, path TEXT, sha256 TEXT,
    arch TEXT, n_blocks INTEGER, eps REAL, norm TEXT);
CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, spec_id INTEGER, config TEXT NOT NULL,
    source TEXT, source_eps REAL, source_norm TEXT, target TEXT, n_label TEXT, n INTEGER,
    unfrozen_blocks TEXT, epochs INTEGER, seed INTEGER,
    {recipe_columns},
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'finished', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0, test_acc REAL, test_loss REAL, train_acc REAL,
    train_loss REAL, seconds REAL, started_at REAL, finished_at REAL, device TEXT, host TEXT,
    worker TEXT, cached_prefix INTEGER, error TEXT, val_acc REAL, robust_acc REAL);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS epochs (run_id TEXT NOT NULL REFERENCES runs (run_id), epoch INTEGER NOT NULL,
    lr REAL, train_loss REAL, train_acc REAL, test_loss REAL, test_acc REAL, seconds REAL,
    val_loss REAL, val_acc REAL, robust_acc REAL,
    PRIMARY KEY (run_id, epoch)) WITHOUT ROWID;
""".replace("{recipe_columns}", ", ".join(f"{c} {t}" for c, t in _RECIPE_SQL.items()))


@dataclass(frozen=True)
class RunOutcome:
    """What a worker sends back for one run (plain data: it crosses process boundaries)."""

    run_id: str
    status: str  # "finished" or "failed"
    started_at: float
    finished_at: float
    host: str = ""
    worker: str = ""
    device: str = ""
    n: int | None = None
    cached_prefix: bool = False
    history: tuple[dict[str, Any], ...] = ()
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.finished_at - self.started_at

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


@dataclass(frozen=True)
class StudyStatus:
    """How far a study is.

    Attributes:
        total: runs planned (every spec run into the directory).
        finished, failed, pending: counts by status (``pending`` includes runs left
            ``running`` by a driver that is gone).
        running: runs a live driver is running now.
        specs: number of specs stored.
        seconds: summed run time of finished runs.
    """

    total: int
    finished: int
    failed: int
    pending: int
    running: int
    specs: int
    seconds: float

    @property
    def missing(self) -> int:
        return self.total - self.finished

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "missing": self.missing}


class StoreDamagedError(ConfigError):
    """``study.db`` is not a readable SQLite database of this schema (truncated, garbage)."""


def damaged(path: Path, what: str) -> StoreDamagedError:
    """The one-line error for a damaged store: which file, what is wrong, how to recover."""
    study = path.parent
    return StoreDamagedError(
        f"{path} is damaged ({what}): salvage its finished runs with 'robust-transfer study "
        f"repair {study} --out NEW_DIR', or rerun the spec ({study / 'spec.yaml'}) into a new --out")


class StudyStore:
    """The SQLite results store of one study directory.

    Args:
        study_dir: the directory; ``study.db`` inside it.
        create: create the directory and database if absent.
        readonly: open for reading only (``status``, ``export``, the analysis); creates no
            file, and works on a read-only folder.

    Raises:
        ConfigError: no study at ``study_dir`` (and ``create`` is false), or a database of
            a newer schema.
        StoreDamagedError: ``study.db`` is truncated, overwritten or otherwise unreadable.
    """

    def __init__(self, study_dir: str | Path, create: bool = False, readonly: bool = False) -> None:
        self.dir = Path(study_dir)
        self.path = self.dir / DB_NAME
        self.readonly = readonly
        self.uri = ""
        if not self.path.is_file():
            if not create or readonly:
                raise ConfigError(f"{self.dir} holds no study (no {DB_NAME}); run "
                                  "'robust-transfer study run SPEC --out DIR' first")
            self.dir.mkdir(parents=True, exist_ok=True)
        else:
            _check_header(self.path)
        try:
            self.conn = self._connect(readonly)
            try:
                self._check_integrity()
                if not readonly:
                    self._init_schema()
                self._check_version()
            except BaseException:
                self.conn.close()
                raise
        except sqlite3.DatabaseError as err:
            raise _as_error(self.path, err) from None

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        self.uri = reader_uri(self.path) if readonly else f"file:{_quote(self.path)}"
        conn = sqlite3.connect(self.uri, uri=True, timeout=30.0, isolation_level=None)
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL: a killed process loses nothing committed; a power cut may lose
            # the last commits (those runs rerun), never corrupts the database
            conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _check_integrity(self) -> None:
        problems = [r[0] for r in self.conn.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            raise damaged(self.path, "; ".join(" ".join(p.split()) for p in problems)[:200])
        if self.readonly or self.path.stat().st_size:
            tables = {r[0] for r in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'").fetchall()}
            lacking = sorted({"meta", "specs", "sources", "runs", "epochs"} - tables)
            if lacking and (self.readonly or tables):
                raise damaged(self.path, f"no table {', '.join(lacking)}: not a study store")

    def _init_schema(self) -> None:
        with self.transaction() as c:
            for statement in _statements(_SCHEMA):  # executescript would COMMIT on its own
                c.execute(statement)
            c.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            c.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (str(time.time()),))
            for table, column in _V2_COLUMNS:  # a version-1 store gains the new columns
                have = {row[1] for row in c.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    c.execute(f"ALTER TABLE {table} ADD COLUMN {column} REAL")
            _add_recipe_columns(c)
            c.execute("UPDATE meta SET value=? WHERE key='schema_version' AND CAST(value AS INTEGER) < ?",
                      (str(SCHEMA_VERSION), SCHEMA_VERSION))

    def _check_version(self) -> None:
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        try:
            version = int(row[0]) if row else SCHEMA_VERSION
        except (TypeError, ValueError):
            raise damaged(self.path, f"schema version {row[0]!r} is not a number") from None
        if version > SCHEMA_VERSION:
            raise ConfigError(f"{self.path} has schema version {row[0]}; this robust-transfer "
                              f"reads up to {SCHEMA_VERSION}: upgrade it")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any exception.

        Raises:
            StoreWriteError: the write failed (a full disk, an I/O error); nothing of the
                transaction is kept, so rerunning the command redoes exactly its runs.
        """
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:  # SQLite may have rolled back by itself
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as err:
            raise _write_error(self.path, err) from None

    def close(self) -> None:
        if not self.readonly:
            try:  # back to a rollback journal: readers then leave no -wal/-shm files behind
                self.conn.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.OperationalError:
                pass  # a reader has it open; WAL stays until the next driver closes it
        self.conn.close()

    def __enter__(self) -> StudyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- specs and sources -----------------------------------------------------------
    def specs(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT spec_id, added_at, run_set, n_runs, name, text FROM specs "
                                 "ORDER BY spec_id").fetchall()
        keys = ("spec_id", "added_at", "run_set", "n_runs", "name", "text")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def add_spec(self, run_set: str, n_runs: int, name: str, text: str) -> int:
        with self.transaction() as c:
            cur = c.execute("INSERT INTO specs (added_at, run_set, n_runs, name, text) "
                            "VALUES (?, ?, ?, ?, ?)", (time.time(), run_set, n_runs, name, text))
            rowid = cur.lastrowid
            if rowid is None:  # sqlite sets it for every INSERT
                raise RuntimeError("sqlite gave no row id for the new spec")
            return int(rowid)

    def sources(self) -> dict[str, dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM sources")
        names = [d[0] for d in cur.description]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}

    def pin_sources(self, infos: Iterable[dict[str, Any]]) -> None:
        """Record each source's checkpoint; refuse one whose label now means other weights.

        A checkpoint rewritten with the same tensors (its sidecar's ``replaces_sha256``
        names the pinned sha256, see ``embed_header``) is accepted and pinned anew.

        Raises:
            RobustTransferError: a label's checkpoint changed since the study started.
        """
        known = self.sources()
        infos = list(infos)
        rewritten = []
        for info in infos:
            old = known.get(info["label"])
            if old and info["sha256"] and old["sha256"] and old["sha256"] != info["sha256"]:
                if _replaces(info.get("path"), old["sha256"]):  # same tensors, header rewritten
                    rewritten.append((info["sha256"], info["label"]))
                    continue
                raise RobustTransferError(
                    f"source '{info['label']}' had checkpoint sha256 {old['sha256'][:12]}... when "
                    f"{self.dir} was started and now has {info['sha256'][:12]}...: restore that "
                    "checkpoint, or give the new one another label (with --extend)")
        with self.transaction() as c:
            c.executemany("UPDATE sources SET sha256=? WHERE label=?", rewritten)
            for info in infos:
                if info["sha256"]:
                    c.execute("INSERT OR IGNORE INTO sources VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              tuple(info[k] for k in ("label", "model", "path", "sha256", "arch",
                                                      "n_blocks", "eps", "norm")))

    # --- planning --------------------------------------------------------------------
    def plan(self, rows: Iterable[dict[str, Any]], spec_id: int) -> int:
        """Insert runs not yet in the store as ``pending``; return how many were new."""
        columns = ("run_id", "spec_id", "config", "source", "source_eps", "source_norm", "target",
                   "n_label", "unfrozen_blocks", "epochs", "seed", *RECIPE_COLUMNS)
        sql = (f"INSERT OR IGNORE INTO runs ({', '.join(columns)}) "
               f"VALUES ({', '.join('?' * len(columns))})")
        with self.transaction() as c:
            before = c.total_changes
            c.executemany(sql, ([r[k] if k != "spec_id" else spec_id for k in columns] for r in rows))
            return c.total_changes - before

    def statuses(self, run_ids: Iterable[str] | None = None) -> dict[str, str]:
        """``run_id -> status`` for the given runs (all when ``None``)."""
        rows = self.conn.execute("SELECT run_id, status FROM runs").fetchall()
        if run_ids is None:
            return dict(rows)
        wanted = set(run_ids)
        return {r: s for r, s in rows if r in wanted}

    def mark_running(self, run_ids: list[str]) -> None:
        with self.transaction() as c:
            c.executemany("UPDATE runs SET status='running', attempts=attempts+1 WHERE run_id=?",
                          [(r,) for r in run_ids])

    def reset_running(self) -> int:
        """Runs left ``running`` by a driver that died become ``pending`` again."""
        with self.transaction() as c:
            return c.execute("UPDATE runs SET status='pending' WHERE status='running'").rowcount

    # --- results ---------------------------------------------------------------------
    def record(self, outcome: RunOutcome) -> None:
        """Write one run's outcome and its epochs in a single transaction."""
        final = outcome.final
        values = {"n": outcome.n, "status": outcome.status, "test_acc": _sql_float(final.get("test_acc")),
                  "test_loss": _sql_float(final.get("test_loss")), "train_acc": _sql_float(final.get("train_acc")),
                  "train_loss": _sql_float(final.get("train_loss")), "seconds": outcome.seconds,
                  "started_at": outcome.started_at, "finished_at": outcome.finished_at,
                  "device": outcome.device, "host": outcome.host, "worker": outcome.worker,
                  "cached_prefix": int(outcome.cached_prefix), "error": outcome.error,
                  "val_acc": _sql_float(final.get("val_acc")), "robust_acc": _sql_float(final.get("robust_acc"))}
        sets = ", ".join(f"{k}=?" for k in RESULT_COLUMNS)
        with self.transaction() as c:
            cur = c.execute(f"UPDATE runs SET {sets} WHERE run_id=?",
                            [values[k] for k in RESULT_COLUMNS] + [outcome.run_id])
            if cur.rowcount != 1:
                raise RobustTransferError(f"run {outcome.run_id} is not part of this study")
            c.execute("DELETE FROM epochs WHERE run_id=?", (outcome.run_id,))
            c.executemany(f"INSERT INTO epochs (run_id, epoch, {', '.join(EPOCH_COLUMNS)}) "
                          f"VALUES ({', '.join('?' * (len(EPOCH_COLUMNS) + 2))})",
                          [(outcome.run_id, int(h["epoch"]), *(_sql_float(h.get(k)) for k in EPOCH_COLUMNS))
                           for h in outcome.history])

    def status(self, live: bool = False) -> StudyStatus:
        """Counts by status; ``live``: a driver is running, so ``running`` rows are real."""
        counts = dict(self.conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        seconds = self.conn.execute("SELECT COALESCE(SUM(seconds), 0) FROM runs "
                                    "WHERE status='finished'").fetchone()[0]
        n_specs = self.conn.execute("SELECT COUNT(*) FROM specs").fetchone()[0]
        running = counts.get("running", 0)
        return StudyStatus(sum(counts.values()), counts.get("finished", 0), counts.get("failed", 0),
                           counts.get("pending", 0) + (0 if live else running),
                           running if live else 0, n_specs, float(seconds))

    def failures(self, limit: int = 20) -> list[tuple[str, str]]:
        rows = self.conn.execute("SELECT run_id, error FROM runs WHERE status='failed' "
                                 "ORDER BY finished_at LIMIT ?", (limit,)).fetchall()
        return [(r, e or "") for r, e in rows]

    def mean_seconds(self) -> list[tuple[str, float]]:
        """``(config JSON, seconds)`` of finished runs, for cost estimates."""
        return self.conn.execute("SELECT config, seconds FROM runs WHERE status='finished'").fetchall()


def _replaces(weights: str | None, old_sha256: str) -> bool:
    """Whether checkpoint ``weights`` says it holds the tensors of ``old_sha256`` (its
    header was rewritten by :func:`~robust_transfer.models.checkpoints.embed_header`)."""
    if not weights:
        return False
    try:
        meta = json.loads(Path(weights).with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("replaces_sha256") == old_sha256


def _quote(path: Path) -> str:
    from urllib.parse import quote

    return quote(str(path.resolve()))


def _check_header(path: Path) -> None:
    """Refuse a file that is not SQLite at all before SQLite reads it (its errors are vague)."""
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None
    if head and not head.startswith(_SQLITE_MAGIC):
        raise damaged(path, "not an SQLite database: the file was overwritten or is garbage")
    if 0 < len(head) < 100:
        raise damaged(path, f"truncated to {len(head)} bytes")


def _wal_header(path: Path) -> bool:
    """Whether the database file says it is in WAL mode (header bytes 18-19 are 2)."""
    with open(path, "rb") as f:
        head = f.read(20)
    return head[18:20] == b"\x02\x02"


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def reader_uri(path: Path) -> str:
    """The SQLite URI a reader opens ``path`` with: ``mode=ro``, plus ``immutable=1`` when
    the folder cannot be written and no write-ahead log is pending (a WAL database can then
    be read without creating its ``-shm`` file)."""
    base = f"file:{_quote(path)}?mode=ro"
    wal = Path(f"{path}-wal")
    pending = wal.exists() and wal.stat().st_size > 0
    if not _wal_header(path):
        return base  # rollback journal: read-only readers create nothing
    if pending:
        if not _writable(path.parent) and not Path(f"{path}-shm").exists():
            raise ConfigError(f"{path} has a write-ahead log ({wal.name}) but no {path.name}-shm "
                              f"and its folder is read-only: copy {path.parent} to a writable "
                              "place and read it there")
        return base  # a live (or killed) driver's WAL: read through it
    if not _writable(path.parent):
        return base + "&immutable=1"
    from robust_transfer.study.lock import driver_alive

    # an idle WAL database (left by an older version): immutable unless a driver writes now
    return base if driver_alive(path.parent) else base + "&immutable=1"


class StoreWriteError(RobustTransferError):
    """``study.db`` could not be written (disk full, I/O error); what was committed stays."""


_FULL, _IOERR = 13, 10  # SQLITE_FULL, SQLITE_IOERR (primary result codes)


def _write_error(path: Path, err: sqlite3.OperationalError) -> RobustTransferError:
    text = " ".join(str(err).split())
    code = (getattr(err, "sqlite_errorcode", None) or 0) & 0xFF
    if code in (_FULL, _IOERR) or "disk is full" in text or "disk I/O" in text:
        what = "the disk is full" if code == _FULL or "full" in text else "a disk I/O error"
        return StoreWriteError(f"cannot write {path}: {what} ({text}); free space in "
                               f"{path.parent} and rerun the same command: every run recorded so "
                               "far is kept, and the runs not recorded run again")
    return _as_error(path, err)


def _as_error(path: Path, err: sqlite3.DatabaseError) -> ConfigError:
    text = " ".join(str(err).split())
    if isinstance(err, sqlite3.OperationalError) and "unable to open" in text:
        return ConfigError(f"cannot open {path}: {text}")
    if isinstance(err, sqlite3.OperationalError) and "locked" in text:
        return ConfigError(f"{path} is locked by another process ({text}); retry in a moment")
    return damaged(path, text)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """SQLite errors while reading become one line naming the file."""
    try:
        yield
    except sqlite3.DatabaseError as err:
        raise _as_error(path, err) from None


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _sql_float(value: Any) -> float | None:
    """SQLite has no NaN: epochs that were not evaluated are stored as NULL."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def run_row(config: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """The planning columns of ``runs`` for one run config and its resolved source."""
    from robust_transfer.study.spec import canonical_json, config_id

    recipe = config["recipe"]
    row = {"run_id": config_id(config), "config": canonical_json(config), "source": config["source"],
           "source_eps": source["eps"], "source_norm": source["norm"], "target": config["target"],
           "n_label": config["n"], "unfrozen_blocks": config["unfrozen_blocks"],
           "epochs": config["epochs"], "seed": config["seed"]}
    row.update({k: recipe_cell(recipe, k) for k in RECIPE_COLUMNS})
    return row


def recipe_cell(recipe: dict[str, Any], name: str) -> Any:
    """The store's cell for recipe field ``name`` of a config's recipe dict.

    A field left out of the dict (at its default, see ``Recipe.to_dict``) gets its default;
    choice fields whose values are not all strings (``augment``: true, false, "auto") are
    stored as JSON text.
    """
    value = recipe.get(name, recipe_fields.defaults()[name])
    return json.dumps(value) if recipe_fields.specs()[name].kind is object else value


def _add_recipe_columns(c: sqlite3.Connection) -> None:
    """Give a store the recipe columns it lacks (a field given a column later), filled in
    from each run's config."""
    have = {row[1] for row in c.execute("PRAGMA table_info(runs)")}
    for name in (n for n in RECIPE_COLUMNS if n not in have):
        c.execute(f"ALTER TABLE runs ADD COLUMN {name} {_RECIPE_SQL[name]}")
        cells = [(recipe_cell(json.loads(config).get("recipe") or {}, name), run_id)
                 for run_id, config in c.execute("SELECT run_id, config FROM runs").fetchall()]
        c.executemany(f"UPDATE runs SET {name}=? WHERE run_id=?", cells)


# --- reading results (the analysis' entry point) -------------------------------------
def load_results(study_dir: str | Path) -> tuple[Any, Any]:
    """The finished runs of a study and their per-epoch metrics, as pandas frames.

    Args:
        study_dir: a study directory (holding ``study.db``).

    Returns:
        ``(runs, epochs)``. ``runs``: one row per finished run with ``run_id, source,
        source_eps, source_norm, target, n, n_label, unfrozen_blocks, epochs, seed,
        test_acc`` and the recipe columns (``lr, momentum, weight_decay, schedule,
        batch_size, augment, resolution, head_init, eval_every``), ``status``,
        ``test_loss, train_acc, train_loss, seconds, device, cached_prefix``.
        ``epochs``: ``run_id, epoch, lr, train_loss, train_acc, test_loss, test_acc,
        seconds`` (test columns NaN where not evaluated).

    Raises:
        ConfigError: no study in ``study_dir``.
    """
    import pandas as pd

    with StudyStore(study_dir, readonly=True) as store, _reading(store.path):
        runs = pd.read_sql_query(_RUNS_QUERY.format(v2=_v2_select(store.conn)), store.conn)
        epochs = pd.read_sql_query(
            "SELECT e.* FROM epochs e JOIN runs r USING (run_id) WHERE r.status='finished' "
            "ORDER BY e.run_id, e.epoch", store.conn)
    return _typed_runs(runs), _typed_epochs(epochs)


_RUNS_QUERY = (
    "SELECT run_id, source, source_eps, source_norm, target, n, n_label, unfrozen_blocks, epochs, "
    f"seed, test_acc, {', '.join(RECIPE_COLUMNS)}, status, test_loss, train_acc, train_loss, "
    "seconds, device, cached_prefix, {v2} FROM runs WHERE status='finished' ORDER BY run_id")


def _v2_select(conn: sqlite3.Connection) -> str:
    """The version-2 result columns, as NULL where a read-only version-1 store lacks them."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    return ", ".join(c if c in have else f"NULL AS {c}" for t, c in _V2_COLUMNS if t == "runs")


def _typed_runs(runs):
    kinds = recipe_fields.column_kinds()
    nullable = {n: s.nullable for n, s in recipe_fields.specs().items()}
    recipe_int = [c for c in RECIPE_COLUMNS if kinds[c] is int and not nullable[c]]
    recipe_float = [c for c in RECIPE_COLUMNS if kinds[c] is float and not nullable[c]]
    of = {kind: [c for c, t in RUN_TYPES.items() if t is kind] for kind in (int, float, str)}
    for col in (*of[int], *recipe_int):
        runs[col] = runs[col].astype("int64")
    for col in (*of[float], *recipe_float, "val_acc", "robust_acc"):
        runs[col] = runs[col].astype("float64")
    for col in of[str]:
        runs[col] = runs[col].astype(str)
    runs["cached_prefix"] = runs["cached_prefix"].astype(bool)
    # stored as JSON (true, false, "auto"); exported as the value, never as '"auto"'
    runs["augment"] = runs["augment"].map(lambda s: json.loads(s) if isinstance(s, str) else s)
    return runs


def _typed_epochs(epochs):
    epochs["epoch"] = epochs["epoch"].astype("int64")
    for col in EPOCH_COLUMNS:
        if col not in epochs:  # a read-only version-1 store
            epochs[col] = math.nan
        epochs[col] = epochs[col].astype("float64")  # NULL -> NaN
    return epochs


def study_status(study_dir: str | Path) -> StudyStatus:
    """Counts of a study's runs: total, finished, failed, pending, running."""
    from robust_transfer.study.lock import driver_alive

    with StudyStore(study_dir, readonly=True) as store, _reading(store.path):
        return store.status(live=driver_alive(study_dir))


def spec_text(study_dir: str | Path) -> str:
    """The spec(s) stored with a study, as YAML text (several separated by ``---``)."""
    with StudyStore(study_dir, readonly=True) as store, _reading(store.path):
        texts = [s["text"] for s in store.specs()]
    return "\n---\n".join(texts)


def export_results(study_dir: str | Path, fmt: str = "csv", out_dir: str | Path | None = None) -> list[Path]:
    """Write ``runs`` and ``epochs`` of the finished runs as CSV or Parquet files.

    Args:
        study_dir: the study.
        fmt: ``"csv"`` or ``"parquet"`` (needs pyarrow).
        out_dir: where (default: ``<study_dir>/export``).

    Returns:
        The paths written: ``runs.<fmt>`` and ``epochs.<fmt>``.

    Raises:
        ConfigError: unknown format, or parquet without pyarrow.
    """
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"unknown export format '{fmt}'; valid: csv, parquet")
    if fmt == "parquet":
        _require_pyarrow()
    folder = Path(out_dir) if out_dir else Path(study_dir) / "export"
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"export folder {folder} is an existing file; choose another --out")
    runs, epochs = load_results(study_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create export folder {folder} ({err.strerror or err}); "
                          "pass --out a writable folder") from None
    paths = [folder / f"runs.{fmt}", folder / f"epochs.{fmt}"]
    for frame, path in zip((runs, epochs), paths, strict=True):
        tmp = path.with_name(f".{path.name}.tmp")
        frame.to_csv(tmp, index=False) if fmt == "csv" else frame.to_parquet(tmp, index=False)
        tmp.replace(path)
    return paths


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError("parquet export needs pyarrow: pip install pyarrow (or use --format csv)") from None


# --- salvaging a damaged store -------------------------------------------------------
@dataclass(frozen=True)
class RepairReport:
    """What :func:`repair_store` saved.

    Attributes:
        out_dir: the new study directory.
        finished: finished runs copied whole (config, results and every epoch).
        dropped: finished runs found but not copied (their epochs were unreadable).
        specs, sources: spec and source rows copied.
        unreadable_rows: rows of ``runs`` that could not be read at all.
    """

    out_dir: Path
    finished: int
    dropped: int
    specs: int
    sources: int
    unreadable_rows: int


def repair_store(study_dir: str | Path, out_dir: str | Path) -> RepairReport:
    """Copy every finished run that can still be read from a (damaged) store into a new one.

    Reads a copy of ``study.db`` and its write-ahead log (so the finished runs of a killed
    driver, not yet checkpointed into the database file, are salvaged too) row by row,
    narrowing down around unreadable pages, so one bad page loses only the rows on it. A run is copied only with all its epochs; runs not copied simply run
    again when the spec is rerun into ``out_dir``. The source directory is never written.

    Args:
        study_dir: the damaged study directory.
        out_dir: a new directory (must not exist, or be empty).

    Returns:
        A :class:`RepairReport`.

    Raises:
        ConfigError: no ``study.db`` in ``study_dir``, ``out_dir`` is not empty, nothing
            at all can be read (not an SQLite database), or a live driver runs the study.
    """
    src = Path(study_dir) / DB_NAME
    out = Path(out_dir)
    if not src.is_file():
        raise ConfigError(f"{study_dir} holds no {DB_NAME} to repair")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder; choose a new one")
    with open(src, "rb") as f:
        if not f.read(16).startswith(_SQLITE_MAGIC):
            raise ConfigError(f"nothing in {src} can be salvaged (not an SQLite database); rerun "
                              f"the spec ({Path(study_dir) / 'spec.yaml'}) into a new --out")
    from robust_transfer.study.lock import driver_alive

    if driver_alive(study_dir):
        raise ConfigError(f"{study_dir} is being run by a live driver; stop it (or let it "
                          "finish) before repairing, so the copy is consistent")
    with tempfile.TemporaryDirectory(prefix="rt-repair-") as tmp:
        conn = sqlite3.connect(_snapshot(src, Path(tmp)))
        try:
            specs, _ = _salvage(conn, "specs", "spec_id")
            sources, _ = _salvage(conn, "sources", "rowid")
            runs, bad = _salvage(conn, "runs", "rowid", "status='finished'")
            epochs = {r["run_id"]: _epochs_of(conn, r["run_id"]) for r in runs}
        finally:
            conn.close()
    # one epochs row per epoch (NULL test metrics where not evaluated): all of them or none
    complete = [r for r in runs
                if (rows := epochs[r["run_id"]]) is not None and len(rows) == r["epochs"]]
    _write_salvage(out, specs, sources, complete, epochs)
    spec_copy = Path(study_dir) / "spec.yaml"
    if spec_copy.is_file():
        shutil.copyfile(spec_copy, out / "spec.yaml")
    return RepairReport(out, len(complete), len(runs) - len(complete), len(specs), len(sources), bad)


def _snapshot(src: Path, folder: Path) -> Path:
    """Copy ``src`` and its write-ahead log (a killed driver's committed runs live there
    until a checkpoint) into ``folder``; SQLite reads the log from the copy, so the damaged
    study is never written (not even its ``-shm``)."""
    copy = folder / src.name
    try:
        shutil.copyfile(src, copy)
        wal = Path(f"{src}-wal")
        if wal.is_file():
            shutil.copyfile(wal, Path(f"{copy}-wal"))
    except OSError as err:
        raise ConfigError(f"cannot copy {src} to salvage it ({err.strerror or err}); free "
                          f"space in {folder.parent} or set TMPDIR to a roomier folder") from None
    return copy


def _salvage(conn: sqlite3.Connection, table: str, key: str,
             where: str = "1") -> tuple[list[dict[str, Any]], int]:
    """The readable rows of ``table`` and how many rows could not be read."""
    try:
        names = [r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()]
        low, high = conn.execute(f"SELECT MIN({key}), MAX({key}) FROM {table}").fetchone()
    except sqlite3.DatabaseError:
        return [], 0
    if not names or low is None:
        return [], 0
    rows: list[dict[str, Any]] = []
    bad = _read_range(conn, table, key, where, names, int(low), int(high), rows)
    return rows, bad


def _read_range(conn, table, key, where, names, low, high, rows) -> int:
    """Append the rows with ``low <= key <= high``; bisect around errors. Returns rows lost."""
    try:
        found = conn.execute(f"SELECT {', '.join(names)} FROM {table} "
                             f"WHERE {key} BETWEEN ? AND ? AND {where}", (low, high)).fetchall()
    except sqlite3.DatabaseError:
        if low == high:
            return 1
        mid = (low + high) // 2
        return (_read_range(conn, table, key, where, names, low, mid, rows)
                + _read_range(conn, table, key, where, names, mid + 1, high, rows))
    rows.extend(dict(zip(names, r, strict=True)) for r in found)
    return 0


def _epochs_of(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]] | None:
    try:
        cur = conn.execute("SELECT * FROM epochs WHERE run_id=? ORDER BY epoch", (run_id,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    except sqlite3.DatabaseError:
        return None


def _write_salvage(out: Path, specs, sources, runs, epochs) -> None:
    # by column name: a store of an older schema version has fewer columns, all of them known
    rows = [("specs", r) for r in specs] + [("sources", r) for r in sources] + \
        [("runs", r) for r in runs] + [("epochs", e) for r in runs for e in epochs[r["run_id"]]]
    with StudyStore(out, create=True) as store, store.transaction() as c:
        for table, row in rows:
            c.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(row)}) VALUES "
                      f"({', '.join('?' * len(row))})", tuple(row.values()))
