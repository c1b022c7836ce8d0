"""The results store: one SQLite database per output folder, one row per cell (and per evaluation of weights
trained elsewhere: ``bench evaluate``).

A row moves ``running`` -> (``interrupted`` | ``failed``)* -> ``done``. Every write is a transaction, and a finished
result is never rewritten, whatever a later run does: the only statements that touch a row that is ``done`` add what
is measured of it afterwards (its scores over whole scenes) or its annotation, counted or priced anew.

A store is made whole under another name, then renamed into place. A file is taken for a store only when it is one:
SQLite's ``application_id`` says so (a store written before it was set is known by its ``cells`` table and schema
version 1, and gets the mark the first time it is written). Anything else (another program's database, a file that
is not SQLite, an empty file, a store of a newer schema, a damaged one) is refused in one line, after looking at it
through a read-only connection: a file that is not ours is never written. A store opened ``readonly`` (``bench
export``, ``leaderboard``, ``--dry-run``, ``prune`` without ``--delete``) is never written either, and can sit on a
read-only disk.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from registry.errors import UserError
from registry.maskers.pixels import FULL_LABELS

SCHEMA_VERSION = 1
APPLICATION_ID = 0x50534547  # "PSEG", in the header of every store this code writes
SQLITE_MAGIC = b"SQLite format 3\x00"
SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    cell_id     TEXT PRIMARY KEY,
    grid        TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    label       TEXT NOT NULL,
    config      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('running', 'interrupted', 'failed', 'done')),
    history     TEXT NOT NULL DEFAULT '[]',
    metrics     TEXT,
    provenance  TEXT,
    error       TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    started_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    finished_at TEXT
)
"""
COLUMNS = {"cell_id", "grid", "dataset", "label", "config", "status", "history", "metrics", "provenance", "error",
           "attempts", "started_at", "updated_at", "finished_at"}


# A row's config says what made it: a trained cell's has no "kind"; weights scored by `bench evaluate` (trained
# elsewhere) are marked so, and are never taken for a cell of a grid.
TRAINING, EVALUATION = "training", "evaluation"


class StoreError(UserError):
    """A results store that cannot be used: not one, damaged, of a newer schema, or not writable."""


@dataclass(frozen=True)
class CellRow:
    cell_id: str
    grid: str
    dataset: str
    label: str
    config: dict[str, Any]
    status: str
    history: list[dict[str, Any]]
    metrics: dict[str, Any] | None
    provenance: dict[str, Any] | None
    error: str | None
    attempts: int
    started_at: str
    finished_at: str | None

    @property
    def fully_labelled(self) -> bool:
        """A cell trained on every label (the ``full`` masker): the reference its partially labelled peers are
        measured against."""
        return self.config.get("masker", {}).get("name") == FULL_LABELS

    @property
    def kind(self) -> str:
        return self.config.get("kind", TRAINING)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _finite_or_none(value: Any) -> Any:
    """NaN is not JSON: a score that does not exist (the IoU of an absent class) is stored as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _json(value: Any) -> str | None:
    return json.dumps(_finite_or_none(value), allow_nan=False, default=str) if value is not None else None


class ResultStore:
    """The store at ``path``: created when it does not exist (unless ``readonly``), checked to be one otherwise.
    Every SQLite error becomes a :class:`StoreError` naming the file."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder, not a results store")
        if not self.path.exists():
            if readonly:
                raise StoreError(f"no results store at {self.path}")
            with self._reporting():
                _create(self.path)
        _check_is_store(self.path)
        with self._reporting():
            self._db = _connect_readonly(self.path) if readonly else sqlite3.connect(self.path, timeout=30)
            try:
                self._db.row_factory = sqlite3.Row
                if not readonly:
                    self._prepare_for_writing()
                self._empty = not _has_cells_table(self._db)
            except BaseException:  # a store refused is not left open
                self._db.close()
                raise

    def _prepare_for_writing(self) -> None:
        """Never build on a damaged file (its finished rows would be lost to the next write); mark a store written
        before stores were marked."""
        problem = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if problem != "ok":
            raise StoreError(f"{self.path} is damaged ({problem}); move it away to start a new store, or restore it "
                             "from a copy")
        if self._db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        self._db.execute("PRAGMA journal_mode=WAL")

    @contextmanager
    def _reporting(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as err:
            raise StoreError(_describe(self.path, err)) from None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()

    def get(self, cell_id: str) -> CellRow | None:
        if self._empty:
            return None
        with self._reporting():
            row = self._db.execute("SELECT * FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
        return _row(row) if row else None

    def find(self, cell) -> CellRow | None:
        """The stored row of a grid's ``cell`` (a :class:`bench.identity.Cell`): under its id, else a finished one under
        one of its aliases (the ids that cells were stored under before numbers were made canonical)."""
        row = self.get(cell.cell_id)
        if row is not None:
            return row
        for alias in cell.aliases:
            row = self.get(alias)
            if row is not None and row.status == "done":
                return row
        return None

    def rows(self, status: str | None = "done") -> list[CellRow]:
        query, args = "SELECT * FROM cells", ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status,)
        if self._empty:
            return []
        with self._reporting():
            return [_row(r) for r in self._db.execute(query + " ORDER BY started_at, cell_id", args)]

    def select(self, grids: Sequence[str] | None = None, finished_only: bool = True) -> list[CellRow]:
        """The rows of the named grids (every grid when None), the finished ones only unless ``finished_only`` is
        false (what ``bench export`` writes). A name of which the store holds no cells is a UserError naming the
        close ones: a typo would otherwise export nothing."""
        stored = self.rows(status=None)
        names = sorted({row.grid for row in stored})
        for name in grids or []:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
                hint = f"did you mean {', '.join(close)}?" if close else f"grids in it: {', '.join(names) or 'none'}"
                raise UserError(f"no cells of grid {name!r} in {self.path}; {hint}")
        return [row for row in stored
                if (not finished_only or row.status == "done") and (not grids or row.grid in grids)]

    def start(self, cell_id: str, grid: str, dataset: str, label: str, config: dict, provenance: dict) -> None:
        """Mark a cell running (a new row, or a retry of one that is not done)."""
        now = _now()
        with self._reporting(), self._db:
            self._db.execute(
                """INSERT INTO cells (cell_id, grid, dataset, label, config, status, provenance, attempts,
                                      started_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, 'running', ?, 1, ?, ?)
                   ON CONFLICT (cell_id) DO UPDATE SET status = 'running', error = NULL,
                       provenance = excluded.provenance, attempts = attempts + 1, updated_at = excluded.updated_at
                   WHERE cells.status != 'done'""",
                (cell_id, grid, dataset, label, _json(config), _json(provenance), now, now),
            )

    def add_done(self, cell_id: str, grid: str, dataset: str, label: str, config: dict, provenance: dict,
                 metrics: dict) -> None:
        """Store a finished row in one transaction, with no running state before it (an evaluation has nothing to
        resume); a row already stored under ``cell_id`` is kept as it is."""
        now = _now()
        with self._reporting(), self._db:
            self._db.execute(
                """INSERT INTO cells (cell_id, grid, dataset, label, config, status, metrics, provenance, attempts,
                                      started_at, updated_at, finished_at)
                   VALUES (?, ?, ?, ?, ?, 'done', ?, ?, 1, ?, ?, ?)
                   ON CONFLICT (cell_id) DO NOTHING""",
                (cell_id, grid, dataset, label, _json(config), _json(metrics), _json(provenance), now, now, now),
            )

    def record_epoch(self, cell_id: str, history: list[dict]) -> None:
        self._update(cell_id, "history = ?", _json(history))

    def finish(self, cell_id: str, history: list[dict], metrics: dict) -> None:
        self._update(cell_id, "status = 'done', history = ?, metrics = ?, finished_at = ?",
                     _json(history), _json(metrics), _now())

    def record_scene_scores(self, cell_id: str, scene: dict) -> None:
        """Keep a finished cell's scores over whole scenes (``bench predict --labels``) in its metrics, under
        ``"scene"``: the latest scoring replaces an earlier one."""
        self._add_to_finished(cell_id, "scene", scene, "scene scores")

    def record_annotation(self, cell_id: str, annotation: dict) -> None:
        """Keep a finished cell's annotation, its counts and their price (registry.annotation.priced), in its
        metrics under ``"annotation"``: counted anew for a cell stored before annotation was, or priced at another
        table."""
        self._add_to_finished(cell_id, "annotation", annotation, "annotation")

    def record_rounds(self, cell_id: str, rounds: list[dict]) -> None:
        """Keep a finished active cell's rounds (bench.acquisition.ActiveRounds.summaries), priced anew."""
        self._add_to_finished(cell_id, "rounds", rounds, "rounds")

    def _add_to_finished(self, cell_id: str, key: str, value: dict, what: str) -> None:
        """Set ``metrics[key]`` of a finished cell; the cell's own figures are left as they are."""
        row = self.get(cell_id)
        if row is None or row.status != "done":
            raise UserError(f"cell {cell_id} is not a finished cell of {self.path}: not storing its {what}")
        with self._reporting(), self._db:
            self._db.execute("UPDATE cells SET metrics = ?, updated_at = ? WHERE cell_id = ? AND status = 'done'",
                             (_json({**row.metrics, key: value}), _now(), cell_id))

    def fail(self, cell_id: str, error: str) -> None:
        self._update(cell_id, "status = 'failed', error = ?", error)

    def interrupt(self, cell_id: str) -> None:
        self._update(cell_id, "status = 'interrupted'")

    def delete(self, cell_ids: list[str]) -> None:
        """Forget these cells, whatever their status (``bench prune``)."""
        with self._reporting(), self._db:
            self._db.executemany("DELETE FROM cells WHERE cell_id = ?", [(cell_id,) for cell_id in cell_ids])

    def _update(self, cell_id: str, assignments: str, *args: Any) -> None:
        with self._reporting(), self._db:
            self._db.execute(
                f"UPDATE cells SET {assignments}, updated_at = ? WHERE cell_id = ? AND status != 'done'",
                (*args, _now(), cell_id),
            )


def stale_rows(grid, store: ResultStore) -> tuple[list[CellRow], list[CellRow]]:
    """The stored cells filed under ``grid``'s name (a :class:`bench.identity.Grid`) whose identity the grid, as it now
    reads, does not have (by id or alias), in two lists: those run from this grid's file (or stored before the file
    was recorded), what ``bench prune`` lists; and those run from another file of the same name, which are another
    experiment's and never listed for deletion. Evaluations filed under the grid's name are in neither: they are
    no cells of it."""
    current, here = grid.cells_by_id(), str(grid.path.resolve())
    stale = [row for row in store.rows(status=None)
             if row.grid == grid.name and row.kind == TRAINING and row.cell_id not in current]
    ours = [row for row in stale if (row.provenance or {}).get("grid_file", here) == here]
    return ours, [row for row in stale if row not in ours]


def _describe(path: Path, err: sqlite3.DatabaseError) -> str:
    """One line for an SQLite error on the store at ``path``."""
    text = str(err)
    if "readonly" in text or "read-only" in text:
        return f"cannot write {path}: it is read-only (a read-only disk or folder); pass another --out"
    if "disk is full" in text or "disk I/O error" in text:
        return f"cannot write {path}: {text}; free some space and run the same command again"
    if "unable to open" in text:
        return f"cannot open {path}: {text} (is its folder readable and writable?)"
    if "locked" in text or "busy" in text:
        return f"{path} is in use by another process ({text}); try again when it is done"
    return f"{path} is damaged ({text}); move it away to start a new store, or restore it from a copy"


def _create(path: Path) -> None:
    """A new, empty store at ``path``, made under another name and renamed into place: a kill at any moment leaves
    no store or a whole one, never a file that is half of one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create {path}: {err.strerror or err}") from None
    temporary = path.with_name(f".{path.name}.new")
    for leftover in (temporary, Path(f"{temporary}-wal"), Path(f"{temporary}-shm"), Path(f"{temporary}-journal")):
        leftover.unlink(missing_ok=True)
    db = sqlite3.connect(temporary)
    try:
        with db:
            db.execute(SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute("PRAGMA journal_mode=WAL")  # kept in the file's header
    finally:
        db.close()  # the last connection in WAL mode folds the WAL into the file and removes it
    os.replace(temporary, path)


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that cannot write ``path`` and leaves nothing beside it. Without a ``-wal`` file beside it the
    file holds everything and is opened immutable (SQLite then makes no ``-shm`` or ``-wal`` file: nothing appears
    beside another program's database, and it works on a read-only disk). With one (a run is writing, or one was
    killed) it must be read as well, through SQLite's read-only mode; on a read-only disk that also needs the
    ``-shm`` file, and without it the WAL's last transactions cannot be read: immutable again."""
    uri = path.resolve().as_uri()
    if Path(f"{path}-wal").exists():
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            pass
    return sqlite3.connect(f"{uri}?immutable=1", uri=True)


def _has_cells_table(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cells'").fetchone() is not None


def _check_is_store(path: Path) -> None:
    """Raise :class:`StoreError` unless the (non-empty) file at ``path`` is a results store this code can read;
    looks through a read-only connection only."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(SQLITE_MAGIC))
    except OSError as err:
        raise StoreError(f"cannot read {path}: {err.strerror or err}") from None
    if not magic:  # SQLite writes its header as it creates a store: an empty file is a store cut to nothing
        raise StoreError(f"{path} is an empty file, not a results store (one cut short would look so); move it away "
                         "to start a new store, or restore it from a copy")
    if magic != SQLITE_MAGIC:
        raise StoreError(f"{path} is not a results store (not an SQLite database); pass another --out, or move "
                         "the file away")
    try:
        db = _connect_readonly(path)
        try:
            application_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            columns = {row[1] for row in db.execute("PRAGMA table_info(cells)")}
        finally:
            db.close()
    except sqlite3.DatabaseError as err:
        raise StoreError(_describe(path, err)) from None
    ours = application_id == APPLICATION_ID or (application_id == 0 and version == 1 and columns == COLUMNS)
    if not ours:
        shown = ", ".join(tables[:5]) + (" ..." if len(tables) > 5 else "") if tables else "none"
        raise StoreError(f"{path} is an SQLite database of another program (its tables: {shown}), not a results "
                         "store; pass another --out")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} has schema version {version}, newer than version {SCHEMA_VERSION}, which this "
                         "version of partialseg-bench reads: upgrade partialseg-bench to use it")


def _row(row: sqlite3.Row) -> CellRow:
    def load(text: str | None) -> Any:
        return json.loads(text) if text is not None else None

    return CellRow(
        cell_id=row["cell_id"], grid=row["grid"], dataset=row["dataset"], label=row["label"],
        config=load(row["config"]), status=row["status"], history=load(row["history"]), metrics=load(row["metrics"]),
        provenance=load(row["provenance"]), error=row["error"], attempts=row["attempts"],
        started_at=row["started_at"], finished_at=row["finished_at"],
    )
