"""Interrupted grids: a run killed in the middle of a cell resumes from that cell's last finished epoch, without redoing
or losing the cells already finished, and ends with the same numbers as a run that was never interrupted."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from grids import synthetic_grid

EPOCHS = 4
GRID = synthetic_grid(96, 8, 8, arch='{ name = "unet", base_channels = 8, depth = 3 }', fractions="0.2, 0.3, 0.4",
                      epochs=EPOCHS, batch_size=8)
DETERMINISTIC = ("best_miou", "final_miou", "final_accuracy", "confusion_matrix", "final_per_batch_miou",
                 "test_miou", "test_confusion_matrix", "test_epoch")


def start(work: Path, out: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", "run", "--grid", "grid.toml", "--out", out],
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_cells(store: Path) -> dict[str, dict]:
    if not store.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM cells").fetchall()
    except sqlite3.OperationalError:  # the table is not created yet
        return {}
    return {r["cell_id"]: {**dict(r), "history": json.loads(r["history"])} for r in rows}


def wait_until_mid_cell(process: subprocess.Popen, store: Path) -> None:
    """Poll the store until one cell is finished and another has finished an epoch but not its last."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        cells = read_cells(store)
        done = [c for c in cells.values() if c["status"] == "done"]
        midway = [c for c in cells.values() if c["status"] == "running" and 1 <= len(c["history"]) < EPOCHS - 1]
        if done and midway:
            return
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.02)
    raise AssertionError("the run never reached the middle of a cell")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    work = tmp_path_factory.mktemp("straight")
    (work / "grid.toml").write_text(GRID)
    process = start(work, "runs")
    assert process.wait(timeout=300) == 0, process.stderr.read()
    return read_cells(work / "runs" / "results.sqlite")


def test_killed_run_resumes_without_redoing_or_losing_cells(tmp_path, uninterrupted):
    (tmp_path / "grid.toml").write_text(GRID)
    store = tmp_path / "runs" / "results.sqlite"
    process = start(tmp_path, "runs")
    wait_until_mid_cell(process, store)
    process.kill()  # no chance to clean up: as if the machine went down
    process.wait()

    before = read_cells(store)
    finished = {k: v for k, v in before.items() if v["status"] == "done"}
    killed = next(v for v in before.values() if v["status"] == "running")
    epochs_kept = len(killed["history"])
    assert finished and 1 <= epochs_kept < EPOCHS

    rerun = start(tmp_path, "runs")
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert f"{len(finished)} already finished" in stdout

    after = read_cells(store)
    assert set(after) == set(uninterrupted)
    assert all(c["status"] == "done" for c in after.values())
    for cell_id, row in finished.items():  # finished cells untouched: not rerun, not rewritten
        assert after[cell_id] == row
    resumed = after[killed["cell_id"]]
    epochs = [h["epoch"] for h in resumed["history"]]
    assert epochs == list(range(1, EPOCHS + 1))
    assert resumed["attempts"] == 2
    assert [h["resumed"] for h in resumed["history"]].index(True) >= epochs_kept  # picked up where it was stopped
    assert resumed["history"][:epochs_kept] == killed["history"]

    # The same numbers as a run that was never interrupted: all randomness is seeded by (seed, epoch, tile).
    for cell_id, row in after.items():
        ours, theirs = json.loads(row["metrics"]), json.loads(uninterrupted[cell_id]["metrics"])
        for key in DETERMINISTIC:
            assert ours[key] == theirs[key], (cell_id, key)


def test_ctrl_c_marks_the_cell_interrupted_and_exits_130(tmp_path):
    (tmp_path / "grid.toml").write_text(GRID)
    store = tmp_path / "runs" / "results.sqlite"
    process = start(tmp_path, "runs")
    wait_until_mid_cell(process, store)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip() == "interrupted: finished cells are stored; run the same command again to resume"
    statuses = sorted(c["status"] for c in read_cells(store).values())
    assert "interrupted" in statuses and "done" in statuses and "running" not in statuses
