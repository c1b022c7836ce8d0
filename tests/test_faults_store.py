"""Family 4 of the faults: a results store that is not one (another program's database, a file that is not SQLite, an
empty or truncated file, a newer schema, a folder), on a read-only disk, or written before stores were marked. Every
command ends in one line (exit 2) on what it cannot use, and leaves the file as it was, side files included; the
reading commands work on a read-only disk."""

from __future__ import annotations

import os
import sqlite3

import pytest
from user_faults import copy_store, digest, exported, one_line, read_only, run_main, write_grid

from bench.store import APPLICATION_ID, SCHEMA_VERSION

COMMANDS = {
    "run": ["run", "--grid", "GRID", "--out", "OUT"],
    "dry-run": ["run", "--grid", "GRID", "--out", "OUT", "--dry-run"],
    "export": ["export", "--out", "OUT"],
    "export json": ["export", "--out", "OUT", "--format", "json"],
    "leaderboard": ["leaderboard", "--out", "OUT"],
    "prune": ["prune", "--grid", "GRID", "--out", "OUT"],
    "prune --delete": ["prune", "--grid", "GRID", "--out", "OUT", "--delete"],
    "show": ["show", "--grid", "GRID", "--out", "OUT", "--tiles", "1"],
    "evaluate": ["evaluate", "--arch", "unet:base_channels=4,depth=3", "--weights", "WEIGHTS", "--grid", "GRID",
                 "--out", "OUT", "--device", "cpu"],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An output folder with one finished cell of the tiny grid."""
    folder = tmp_path_factory.mktemp("finished")
    grid = write_grid(folder)
    from bench.cli import main
    assert main(["run", "--grid", str(grid), "--out", str(folder / "runs")]) == 0
    return folder / "runs", grid


def argv(command: str, out, grid, weights_from) -> list[str]:
    """COMMANDS[command] with its places filled: the output folder, the grid, and the best.pt of the finished cell
    in ``weights_from`` (an output folder)."""
    (weights,) = weights_from.glob("checkpoints/*/best.pt")
    places = {"OUT": str(out), "GRID": str(grid), "WEIGHTS": str(weights)}
    return [places.get(a, a) for a in COMMANDS[command]]


def foreign(path, with_cells=False):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO users (name) VALUES ('ada')")
    if with_cells:  # a table of the same name, not ours
        db.execute("CREATE TABLE cells (id INTEGER, name TEXT)")
    db.commit()
    db.close()


def with_version(version):
    def make(path, real):
        path.write_bytes(real.read_bytes())
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version = {version}")
        db.execute("PRAGMA journal_mode = DELETE")
        db.close()
    return make


BAD_STORES = {  # name -> (make(path, real store), what the line says)
    "another program's database": (lambda path, real: foreign(path), "of another program (its tables: users)"),
    "another program's database with a cells table": (lambda path, real: foreign(path, True),
                                                       "of another program (its tables: users, cells)"),
    "an empty file": (lambda path, real: path.write_bytes(b""), "is an empty file, not a results store"),
    "a truncated store": (lambda path, real: path.write_bytes(real.read_bytes()[:4096]), "is damaged"),
    "random bytes": (lambda path, real: path.write_bytes(os.urandom(12288)), "is not a results store"),
    "a text file": (lambda path, real: path.write_text("hello world\n"), "is not a results store"),
    "schema version 2": (with_version(2), f"has schema version 2, newer than version {SCHEMA_VERSION}"),
    "schema version 99": (with_version(99), f"has schema version 99, newer than version {SCHEMA_VERSION}"),
}


def side_files(store):
    return sorted(p.name for p in store.parent.iterdir() if p.name.startswith(store.name + "-"))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", BAD_STORES)
def test_a_file_that_is_not_a_usable_store_is_one_line_and_left_as_it_was(finished, tmp_path, capsys, kind, command):
    real_out, grid = finished
    out = tmp_path / "runs"
    out.mkdir()
    store = out / "results.sqlite"
    make, says = BAD_STORES[kind]
    make(store, real_out / "results.sqlite")
    before, files_before = digest(store), side_files(store)
    code, _, err = run_main(capsys, *argv(command, out, grid, real_out))
    one_line(code, err, 2, str(store), says)
    assert digest(store) == before and side_files(store) == files_before
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize("command", ["run", "export", "leaderboard", "prune", "evaluate"])
def test_a_folder_in_the_store_s_place_is_one_line(finished, tmp_path, capsys, command):
    real_out, grid = finished
    (tmp_path / "runs" / "results.sqlite").mkdir(parents=True)
    code, _, err = run_main(capsys, *argv(command, tmp_path / "runs", grid, real_out))
    one_line(code, err, 2, "results.sqlite is a folder, not a results store")


def test_a_store_written_before_stores_were_marked_is_read_as_it_is_and_marked_when_written(finished, tmp_path,
                                                                                             capsys):
    real_out, grid = finished
    out = copy_store(real_out, tmp_path / "runs")
    store = out / "results.sqlite"
    db = sqlite3.connect(store)
    db.execute("PRAGMA application_id = 0")  # as every store was before the mark
    db.close()
    before = digest(store)
    listing = exported(capsys, out)
    assert run_main(capsys, "leaderboard", "--out", str(out))[0] == 0
    assert digest(store) == before  # reading leaves it alone
    code, stdout, err = run_main(capsys, "run", "--grid", str(grid), "--out", str(out))
    assert code == 0 and "1 already finished, 0 to run" in stdout, err
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    db.close()
    assert exported(capsys, out) == listing


def test_the_reading_commands_work_on_a_read_only_disk_and_the_writing_ones_say_so(finished, tmp_path, capsys):
    real_out, grid = finished
    out = copy_store(real_out, tmp_path / "runs")
    listing = exported(capsys, out)
    board = tmp_path / "board.md"
    with read_only(out):
        before = {p.name: digest(p) for p in out.iterdir() if p.is_file()}
        assert exported(capsys, out) == listing
        assert run_main(capsys, "leaderboard", "--out", str(out), "--leaderboard", str(board))[0] == 0
        code, stdout, _ = run_main(capsys, "run", "--grid", str(grid), "--out", str(out), "--dry-run")
        assert code == 0 and "finished" in stdout and "a run would stop before training" in stdout
        code, stdout, _ = run_main(capsys, "prune", "--grid", str(grid), "--out", str(out))
        assert code == 0 and "nothing to prune" in stdout
        for writing in (["run", "--grid", str(grid), "--out", str(out)],
                        ["prune", "--grid", str(grid), "--out", str(out), "--delete", "--set", "axes.seeds=[1]"],
                        argv("evaluate", out, grid, out)):
            code, _, err = run_main(capsys, *writing)
            one_line(code, err, 2, str(out), "read-only")
        assert {p.name: digest(p) for p in out.iterdir() if p.is_file()} == before
    assert "grid `grid`" in board.read_text()
