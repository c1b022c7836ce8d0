"""The annotation cost model (registry.annotation): what each masker's counter counts, against hand-worked masks and
the maskers' own strokes; the prices and their table; a grid's [annotation_cost]; the counts stored with each cell,
priced anew without retraining. The leaderboard's column and the budget frontier: tests/test_leaderboard.py and
tests/test_plots.py."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from grids import synthetic_grid

import registry
from bench.cli import main
from bench.data import partial_masks, tile_generator
from bench.grid import parse_grid
from bench.store import ResultStore
from registry.annotation import (
    PUBLISHED_COSTS,
    UNITS,
    CostError,
    block_counter,
    check_costs,
    count_points,
    count_regions,
    count_strokes,
    priced,
    tally,
)
from registry.errors import ContractError


def mask(rows: list[str]) -> np.ndarray:
    """A partial mask drawn in text: a digit is that class, '.' unlabelled."""
    return np.array([[-1 if c == "." else int(c) for c in row] for row in rows], dtype=np.int64)


TWO_CLASSES = mask([
    "11..2",
    "11..2",
    "..1.2",  # touches the square above by a corner: one region of class 1 with it
    ".....",
    "1....",
])


def test_points_count_every_labelled_pixel():
    assert count_points(TWO_CLASSES) == {"point": 9}
    assert count_points(mask(["..", ".."])) == {"point": 0}


def test_regions_are_the_8_connected_pieces_of_each_class():
    assert count_regions(TWO_CLASSES) == {"region": 3, "dense_pixel": 9}


def test_a_straight_stroke_is_as_long_as_its_centre_line():
    bars = mask([
        "1111111111",  # 3 x 10: one stroke 10 long
        "1111111111",
        "1111111111",
        "..........",
        "22222222..",  # 2 x 8 next to a 1-wide line of another class: 8 + 6
        "22222222..",
        "333333....",
    ])
    assert count_strokes(bars) == {"stroke": 3, "stroke_pixel": pytest.approx(10 + 8 + 6)}


def test_scribble_counts_agree_with_the_strokes_the_masker_drew():
    """One stroke per region: the counter finds each of them in the partial mask, and its length estimate stays near
    the centre line the masker walked (0.77 to 1.15 of it on these tiles)."""
    dataset = registry.create_dataset("synthetic", tile_size=64, train_size=12, val_size=2)
    _, full = dataset.split("train")
    masker = registry.create_masker("scribbles", count=1, width=3)
    for index in range(len(full)):
        tile = torch.from_numpy(full[index].astype(np.int64))
        strokes = masker.strokes(tile, tile_generator(0, index))
        counts = count_strokes(masker(tile, 1.0, tile_generator(0, index)).numpy())
        assert counts["stroke"] == len(strokes)
        centre_line = sum(len(s.path) for s in strokes)
        assert 0.7 * centre_line <= counts["stroke_pixel"] <= 1.3 * centre_line


def test_blocks_count_their_blocks_and_the_regions_in_them():
    partial = np.full((12, 12), -1, dtype=np.int64)
    partial[0:4, 0:4] = 0
    partial[0:4, 2:4] = 1  # a block over two classes: two regions
    partial[8:12, 6:10] = 2
    assert block_counter(4)(partial) == {"block": 2, "region": 3, "dense_pixel": 32}


def test_points_per_class_clicks_once_per_class_present():
    full = torch.from_numpy(mask(["0011", "0011", "2222", "2222"]))
    partial = registry.create_masker("points_per_class", k=1, min_distance=0)(full, 1.0, torch.Generator())
    assert registry.create_masker("points_per_class").annotation(partial.numpy()) == {"point": 3}


@pytest.mark.parametrize("name", registry.list_maskers())
def test_every_masker_counts_the_same_units_on_every_tile_and_nothing_on_an_unlabelled_one(name):
    masker = registry.create_masker(name, **registry.MASKERS.entry(name).test_kwargs)
    dataset = registry.create_dataset("synthetic", tile_size=64, train_size=6, val_size=2)
    _, full = dataset.split("train")
    masks = partial_masks(full, masker, 0.2 if masker.uses_fraction else 1.0, seed=0)
    counted = [masker.annotation(partial) for partial in masks]
    units = set(counted[0])
    assert units and units <= set(UNITS) and all(set(c) == units for c in counted)
    assert all(0 <= v < float("inf") for c in counted for v in c.values())
    assert sum(v for c in counted for v in c.values()) > 0
    assert set(masker.annotation(np.full((64, 64), -1))) == units
    assert all(v == 0 for v in masker.annotation(np.full((64, 64), -1)).values())


def test_a_masker_without_an_annotation_counter_breaks_its_contract():
    class Silent:
        uses_fraction = False

        def __call__(self, full_mask, fraction, generator):
            return full_mask.clone()

    registry.MASKERS.register("silent_masker")(Silent)
    try:
        with pytest.raises(ContractError, match="'silent_masker' has no annotation counter"):
            registry.create_masker("silent_masker")
    finally:
        registry.MASKERS._entries.pop("silent_masker")


def test_hours_per_1000_tiles_by_hand():
    # 2 tiles: 10 clicks at 2.4 s and 3 regions at 79 s = 261 s, 130.5 s a tile, 36.25 h per 1000 tiles
    record = priced({"tile": 2, "point": 10, "region": 3}, PUBLISHED_COSTS)
    assert record["hours_per_1000_tiles"] == pytest.approx(36.25)
    assert record["seconds_per_unit"] == PUBLISHED_COSTS and record["counts"] == {"tile": 2, "point": 10, "region": 3}
    assert priced({"tile": 4, "point": 1}, {**PUBLISHED_COSTS, "tile": 9.0})["hours_per_1000_tiles"] == (
        pytest.approx((4 * 9.0 + 2.4) / 4 * 1000 / 3600))


def test_tally_sums_the_tiles_and_refuses_a_count_that_is_none():
    masks = np.stack([TWO_CLASSES, np.full((5, 5), -1)])
    assert tally(count_regions, masks) == {"tile": 2, "region": 3, "dense_pixel": 9}
    with pytest.raises(ValueError, match="not a count"):
        tally(lambda partial: {"point": -1}, masks)


def test_a_table_overrides_the_published_figures_unit_by_unit():
    assert check_costs({}) == PUBLISHED_COSTS
    assert check_costs({"point": 1, "region": 30.5}) == {**PUBLISHED_COSTS, "point": 1.0, "region": 30.5}
    assert check_costs({"box": 7}, {"box": "my_boxes"})["box"] == 7.0


@pytest.mark.parametrize("table, counted, message", [
    ({"point": -1}, None, "point must be a number of seconds, 0 or more, not -1"),
    ({"point": True}, None, "point must be a number of seconds"),
    ({"point": "2"}, None, "point must be a number of seconds"),
    ({"region": float("inf")}, None, "region must be a number of seconds"),
    ({"region": float("nan")}, None, "region must be a number of seconds"),
    ({"pionts": 1}, None, "has no unit 'pionts'"),
    ([1, 2], None, "must be a table of seconds per unit"),
    ({}, {"box": "my_boxes"}, "masker 'my_boxes' counts 'box', which has no cost"),
])
def test_a_bad_cost_table_is_refused_in_one_line(table, counted, message):
    with pytest.raises(CostError, match=message) as caught:
        check_costs(table, counted)
    assert "\n" not in str(caught.value)


def test_the_cost_table_is_no_part_of_a_cells_identity(tmp_path):
    text = synthetic_grid(maskers='"random_pixels", "scribbles"')
    plain = parse_grid(text, tmp_path / "g.toml")
    costed = parse_grid(text + "\n[annotation_cost]\npoint = 1.0\nstroke_pixel = 0.5\n", tmp_path / "g.toml")
    assert [c.cell_id for c in plain.cells] == [c.cell_id for c in costed.cells]
    assert plain.annotation_cost == PUBLISHED_COSTS
    assert costed.annotation_cost == {**PUBLISHED_COSTS, "point": 1.0, "stroke_pixel": 0.5}


@pytest.mark.parametrize("table, message", [
    ("region = -2", "[annotation_cost] region must be a number of seconds, 0 or more, not -2"),
    ("stroke = 1\nstroke_pixel = 'long'", "[annotation_cost] stroke_pixel must be a number of seconds"),
    ("piont = 2", "unknown key 'piont' in [annotation_cost]; did you mean 'point'?"),
])
def test_a_grids_bad_cost_table_is_one_line_with_its_place(tmp_path, capsys, table, message):
    grid = tmp_path / "g.toml"
    text = synthetic_grid() + f"\n[annotation_cost]\n{table}\n"
    grid.write_text(text)
    line = len(text.splitlines())  # the table's last entry is the bad one
    code = main(["run", "--grid", str(grid), "--out", str(tmp_path / "runs"), "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{grid} line {line}: {message}" in err
    assert not (tmp_path / "runs").exists()


BOX_PLUGIN = """
import numpy as np
import registry


@registry.register_masker("box_masker")
class Boxes:
    uses_fraction = False

    def __call__(self, full_mask, fraction, generator):
        return full_mask.clone()

    @staticmethod
    def annotation(partial):
        return {"box": int(len(np.unique(partial[partial >= 0])))}
"""


@pytest.fixture
def box_plugin_run(tmp_path, capsys):
    """``bench run --dry-run`` of a grid whose masker is the plugin's ``box_masker``, given the plugin's source:
    its exit code, its stderr and the grid file; the masker is unregistered afterwards."""
    grid = tmp_path / "g.toml"
    grid.write_text(synthetic_grid(maskers='"box_masker"'))

    def run(plugin: str) -> tuple[int, str, Path]:
        (tmp_path / "box_plugin.py").write_text(plugin)
        code = main(["run", "--grid", str(grid), "--plugin", str(tmp_path / "box_plugin.py"), "--dry-run",
                     "--out", str(tmp_path / "runs")])
        return code, capsys.readouterr().err.strip(), grid

    yield run
    registry.MASKERS._entries.pop("box_masker", None)


def test_a_plugins_own_unit_must_be_priced_by_the_grid(box_plugin_run):
    code, err, grid = box_plugin_run(BOX_PLUGIN)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "masker 'box_masker' counts 'box', which has no cost: give its seconds in [annotation_cost]" in err
    grid.write_text(synthetic_grid(maskers='"box_masker"') + "\n[annotation_cost]\nbox = 7\n")
    assert parse_grid(grid.read_text(), grid).annotation_cost["box"] == 7.0


def test_a_plugins_counter_that_fails_is_named_in_one_line(box_plugin_run):
    code, err, grid = box_plugin_run(BOX_PLUGIN.replace('return {"box"', 'return {"box": 1 // 0, "x"'))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert ("masker 'box_masker': its annotation counter fails on a tile with no label: ZeroDivisionError"
            in err and f"{grid} line" in err)


def stored(out) -> dict[str, dict]:
    with ResultStore(out / "results.sqlite", readonly=True) as store:
        return {row.cell_id: row for row in store.rows()}


def test_each_cell_stores_its_masks_counts_and_a_new_table_prices_them_without_retraining(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    text = synthetic_grid(train_size=6, maskers='"full", "points_per_class"', fractions="1.0")
    grid.write_text(text)
    out = tmp_path / "runs"
    assert main(["run", "--grid", str(grid), "--out", str(out)]) == 0
    first = stored(out)
    dataset = registry.create_dataset("synthetic", tile_size=32, train_size=6, val_size=4, test_size=4)
    _, full = dataset.split("train")
    for row in first.values():
        masker = registry.create_masker(row.config["masker"]["name"])
        expected = tally(masker.annotation, partial_masks(full, masker, 1.0, row.config["seed"]))
        assert row.metrics["annotation"] == priced(expected, PUBLISHED_COSTS)

    grid.write_text(text + "\n[annotation_cost]\nregion = 20\npoint = 1\n")
    assert main(["run", "--grid", str(grid), "--out", str(out)]) == 0
    assert "0 cells run, 2 already finished" in capsys.readouterr().out
    again = stored(out)
    costs = {**PUBLISHED_COSTS, "region": 20.0, "point": 1.0}
    for cell_id, row in again.items():
        before = first[cell_id]
        assert row.metrics["annotation"] == priced(before.metrics["annotation"]["counts"], costs)
        assert row.history == before.history and row.finished_at == before.finished_at
        assert {k: v for k, v in row.metrics.items() if k != "annotation"} == (
            {k: v for k, v in before.metrics.items() if k != "annotation"})
    board = (out / "leaderboard.md").read_text()
    assert "annotator h / 1000 tiles" in board and "point 1 s, stroke 10.9 s, region 20 s" in board


def test_a_cell_stored_before_annotation_was_counted_gets_its_counts_on_the_next_run(tmp_path, capsys):
    """An upgrade loses nothing: the masks are a function of the cell, so its counts come back without training."""
    grid = tmp_path / "g.toml"
    grid.write_text(synthetic_grid(train_size=6, maskers='"scribbles", "random_pixels"', fractions="0.1"))
    out = tmp_path / "runs"
    assert main(["run", "--grid", str(grid), "--out", str(out)]) == 0
    first = stored(out)
    with sqlite3.connect(out / "results.sqlite") as db:
        for cell_id, row in first.items():
            old = {k: v for k, v in row.metrics.items() if k != "annotation"}
            db.execute("UPDATE cells SET metrics = ? WHERE cell_id = ?", (json.dumps(old), cell_id))
    capsys.readouterr()
    assert main(["run", "--grid", str(grid), "--out", str(out)]) == 0
    assert "0 cells run, 2 already finished" in capsys.readouterr().out
    for cell_id, row in stored(out).items():
        assert row.metrics == first[cell_id].metrics and row.finished_at == first[cell_id].finished_at


def test_the_store_keeps_the_counts_apart_from_the_price(tmp_path):
    """The columns a reader of the SQLite file finds: the counts under metrics.annotation, with the table used."""
    out = tmp_path / "runs"
    grid = tmp_path / "g.toml"
    grid.write_text(synthetic_grid(train_size=4, maskers='"points_per_image"', fractions="1.0",
                                   arch='{ name = "unet", base_channels = 4, depth = 3 }'))
    assert main(["run", "--grid", str(grid), "--out", str(out)]) == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        (metrics,) = db.execute("SELECT metrics FROM cells").fetchone()
    annotation = json.loads(metrics)["annotation"]
    assert annotation["counts"] == {"tile": 4, "point": 4 * 20}  # points_per_image's default count, 20 a tile
    assert annotation["hours_per_1000_tiles"] == pytest.approx(20 * 2.4 * 1000 / 3600)
