"""The results store: one SQLite database per output folder, one row per cell.

A row moves ``running`` -> (``interrupted`` | ``failed``)* -> ``done``. Every write is a transaction, and no statement
here touches a row that is ``done``: a finished result is never rewritten, whatever a later run does.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
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
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise RuntimeError(f"{self.path} has schema version {version}; this code reads {SCHEMA_VERSION}")
            self._db.execute(SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def get(self, cell_id: str) -> CellRow | None:
        row = self._db.execute("SELECT * FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
        return _row(row) if row else None

    def rows(self, status: str | None = "done") -> list[CellRow]:
        query, args = "SELECT * FROM cells", ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status,)
        return [_row(r) for r in self._db.execute(query + " ORDER BY started_at, cell_id", args)]

    def start(self, cell_id: str, grid: str, dataset: str, label: str, config: dict, provenance: dict) -> None:
        """Mark a cell running (a new row, or a retry of one that is not done)."""
        now = _now()
        with self._db:
            self._db.execute(
                """INSERT INTO cells (cell_id, grid, dataset, label, config, status, provenance, attempts,
                                      started_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, 'running', ?, 1, ?, ?)
                   ON CONFLICT (cell_id) DO UPDATE SET status = 'running', error = NULL,
                       provenance = excluded.provenance, attempts = attempts + 1, updated_at = excluded.updated_at
                   WHERE cells.status != 'done'""",
                (cell_id, grid, dataset, label, _json(config), _json(provenance), now, now),
            )

    def record_epoch(self, cell_id: str, history: list[dict]) -> None:
        self._update(cell_id, "history = ?", _json(history))

    def finish(self, cell_id: str, history: list[dict], metrics: dict) -> None:
        self._update(cell_id, "status = 'done', history = ?, metrics = ?, finished_at = ?",
                     _json(history), _json(metrics), _now())

    def fail(self, cell_id: str, error: str) -> None:
        self._update(cell_id, "status = 'failed', error = ?", error)

    def interrupt(self, cell_id: str) -> None:
        self._update(cell_id, "status = 'interrupted'")

    def delete(self, cell_ids: list[str]) -> None:
        """Forget these cells, whatever their status (``bench prune``)."""
        with self._db:
            self._db.executemany("DELETE FROM cells WHERE cell_id = ?", [(cell_id,) for cell_id in cell_ids])

    def _update(self, cell_id: str, assignments: str, *args: Any) -> None:
        with self._db:
            self._db.execute(
                f"UPDATE cells SET {assignments}, updated_at = ? WHERE cell_id = ? AND status != 'done'",
                (*args, _now(), cell_id),
            )


def _row(row: sqlite3.Row) -> CellRow:
    def load(text: str | None) -> Any:
        return json.loads(text) if text is not None else None

    return CellRow(
        cell_id=row["cell_id"], grid=row["grid"], dataset=row["dataset"], label=row["label"],
        config=load(row["config"]), status=row["status"], history=load(row["history"]), metrics=load(row["metrics"]),
        provenance=load(row["provenance"]), error=row["error"], attempts=row["attempts"],
        started_at=row["started_at"], finished_at=row["finished_at"],
    )
