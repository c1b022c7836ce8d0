"""Family 6 of the faults: values equal as numbers are one cell (``weight_decay = 0`` and ``0.0``), and a cell stored
under the identity its grid had before numbers were made canonical is still found: skipped by a run, shown finished
by a dry run, never listed by prune."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from user_faults import TINY, run_main, write_grid

from bench.grid import parse_grid
from bench.store import ResultStore

PAIRS = [  # (text replaced, as written one way, as written the other way)
    ("batch_size = 4", "batch_size = 4\nweight_decay = 0", "batch_size = 4\nweight_decay = 0.0"),
    ("batch_size = 4", "batch_size = 4\nlr = 1", "batch_size = 4\nlr = 1.0"),
    ("batch_size = 4", "batch_size = 4\nmomentum = 1", "batch_size = 4\nmomentum = 1.0"),
    ("batch_size = 4", "batch_size = 4\nwarmup_epochs = 0", "batch_size = 4\nwarmup_epochs = 0.0"),
    ("batch_size = 4", "batch_size = 4\nclass_weights = [1, 2, 1, 1, 3]",
     "batch_size = 4\nclass_weights = [1.0, 2.0, 1.0, 1.0, 3.0]"),
    ('"partial_ce"', '{ name = "partial_focal", gamma = 3 }', '{ name = "partial_focal", gamma = 3.0 }'),
    ('"partial_ce"', '{ name = "partial_dice", smooth = 2 }', '{ name = "partial_dice", smooth = 2.0 }'),
    ('"partial_ce"', '{ name = "partial_ce", regularizers = [{ name = "entropy", rampup = 0 }] }',
     '{ name = "partial_ce", regularizers = [{ name = "entropy", rampup = 0.0 }] }'),
    ('"partial_ce"', '"partial_ce + 1 * entropy"', '"partial_ce + 1.0 * entropy"'),
    ('"random_pixels"', '{ name = "points_per_class", min_distance = 2 }',
     '{ name = "points_per_class", min_distance = 2.0 }'),
    ("fractions = [0.5]", "fractions = [1]", "fractions = [1.0]"),
]


def cells(text):
    return [cell.cell_id for cell in parse_grid(text, Path("grid.toml")).cells]


@pytest.mark.parametrize("old, one, other", PAIRS, ids=[pair[1].split("\n")[-1] for pair in PAIRS])
def test_values_equal_as_numbers_are_one_cell(old, one, other):
    assert old in TINY
    assert cells(TINY.replace(old, one)) == cells(TINY.replace(old, other))


def test_a_cell_stored_under_its_identity_as_written_is_found_by_run_dry_run_and_prune(tmp_path, capsys):
    """A store made before numbers were canonical filed `weight_decay = 0` under another id than `0.0`: the grid
    finds that cell through its alias and neither retrains nor offers to prune it."""
    grid_file = write_grid(tmp_path, TINY.replace("batch_size = 4", "batch_size = 4\nweight_decay = 0"))
    (cell,) = parse_grid(grid_file.read_text(), grid_file).cells
    (alias,) = cell.aliases
    assert alias != cell.cell_id and cell.recipe["weight_decay"] == 0.0
    out = tmp_path / "runs"
    assert run_main(capsys, "run", "--grid", str(grid_file), "--out", str(out))[0] == 0
    with sqlite3.connect(out / "results.sqlite") as db:  # as the earlier code stored it: under the id as written
        db.execute("UPDATE cells SET cell_id = ? WHERE cell_id = ?", (alias, cell.cell_id))
    (out / "checkpoints" / cell.cell_id).rename(out / "checkpoints" / alias)

    code, stdout, _ = run_main(capsys, "run", "--grid", str(grid_file), "--out", str(out), "--dry-run")
    assert code == 0 and "finished" in stdout and "to run" not in stdout
    code, stdout, _ = run_main(capsys, "prune", "--grid", str(grid_file), "--out", str(out))
    assert code == 0 and "nothing to prune" in stdout
    code, stdout, err = run_main(capsys, "run", "--grid", str(grid_file), "--out", str(out))
    assert code == 0 and "1 already finished, 0 to run" in stdout, err
    with ResultStore(out / "results.sqlite", readonly=True) as store:
        assert [row.cell_id for row in store.rows(status=None)] == [alias]  # nothing trained, nothing added
