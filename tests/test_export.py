"""``bench export``: every stored cell as a CSV row or a JSON object, values as stored, bad input in one line."""

from __future__ import annotations

import csv
import io
import json

import pytest

from bench.cli import main
from bench.store import ResultStore


def config(grid: str, arch: str, seed: int) -> dict:
    return {
        "version": 1, "grid": grid, "dataset": {"name": "synthetic", "label": "synthetic", "kwargs": {}},
        "arch": {"name": "unet", "label": arch, "kwargs": {"base_channels": 8}},
        "loss": {"name": "partial_ce", "label": "partial_ce", "kwargs": {}},
        "masker": {"name": "points_per_image", "label": "2 points", "kwargs": {"count": 2}},
        "fraction": 1.0, "seed": seed, "recipe": {"epochs": 2},
    }


def metrics(best: float, class_names: list[str], test: bool) -> dict:
    values = {
        "best_miou": best, "best_epoch": 2, "best_iou": [best + 0.1, None, best - 0.1][:len(class_names)],
        "final_miou": best - 0.01, "labelled_fraction": 0.0005, "class_names": class_names,
        "confusion_matrix": [[1] * len(class_names)] * len(class_names), "precision": "float32",
    }
    if test:
        values.update(test_miou=best - 0.02, test_iou=[0.5] * len(class_names))
    return values


@pytest.fixture
def store_folder(tmp_path):
    """Three finished cells over two grids (the second grid's dataset has other classes, and no test split) and a
    failed one."""
    store = ResultStore(tmp_path / "results.sqlite")
    cells = [("a0", "g", "unet", 0, 0.50, ["background", "road", "water"], True),
             ("a1", "g", "unet", 1, 0.54, ["background", "road", "water"], True),
             ("b0", "other", "wide unet", 0, 0.61, ["ground", "tree"], False)]
    for cell_id, grid, arch, seed, best, classes, test in cells:
        store.start(cell_id, grid, "synthetic", f"{arch} seed {seed}", config(grid, arch, seed), {"device": "CPU x"})
        store.finish(cell_id, [{"epoch": 1, "miou": best}], metrics(best, classes, test))
    store.start("f0", "g", "synthetic", "unet seed 2", config("g", "unet", 2), {"device": "CPU x"})
    store.fail("f0", "RuntimeError: out of memory")
    store.close()
    return tmp_path


def export(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["export", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_csv_has_a_row_per_finished_cell_with_its_stored_values(store_folder, capsys):
    code, out, _ = export(capsys, "--out", str(store_folder))
    assert code == 0
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames[:14] == ["cell_id", "grid", "dataset", "arch", "loss", "masker", "fraction", "seed",
                                      "status", "kind", "labelled_fraction", "best_miou", "final_miou", "test_miou"]
    rows = {row["cell_id"]: row for row in reader}
    assert sorted(rows) == ["a0", "a1", "b0"]
    a1, b0 = rows["a1"], rows["b0"]
    assert (a1["grid"], a1["arch"], a1["masker"], a1["seed"], a1["status"], a1["kind"]) == (
        "g", "unet", "2 points", "1", "done", "training")
    assert float(a1["best_miou"]) == 0.54 and float(a1["test_miou"]) == 0.54 - 0.02
    # Per-class lists become a column per class; a class without a score (None) is an empty field.
    assert float(a1["best_iou_background"]) == 0.54 + 0.1 and a1["best_iou_road"] == ""
    assert float(a1["test_iou_water"]) == 0.5
    # The other dataset's classes are columns of their own, empty for the first grid's cells; no test split: empty.
    assert float(b0["best_iou_ground"]) == 0.61 + 0.1 and a1["best_iou_ground"] == "" and b0["best_iou_road"] == ""
    assert b0["test_miou"] == ""
    assert json.loads(a1["config"]) == config("g", "unet", 1) and a1["device"] == "CPU x"
    # Matrices and histories are left to the JSON.
    assert not any(column.startswith(("confusion_matrix", "history", "class_names")) for column in a1)


def test_all_adds_unfinished_cells_with_their_error(store_folder, capsys):
    _, out, _ = export(capsys, "--out", str(store_folder), "--all")
    rows = {row["cell_id"]: row for row in csv.DictReader(io.StringIO(out))}
    assert sorted(rows) == ["a0", "a1", "b0", "f0"]
    assert rows["f0"]["status"] == "failed" and rows["f0"]["error"] == "RuntimeError: out of memory"
    assert rows["f0"]["best_miou"] == ""


def test_grid_filter_and_json_file_hold_every_stored_field(store_folder, capsys, tmp_path):
    target = tmp_path / "exports" / "cells.json"  # a folder that does not exist yet
    code, out, _ = export(capsys, "--out", str(store_folder), "--grid", "g", "--output", str(target))
    assert code == 0 and "2 cells written" in out
    cells = json.loads(target.read_text())
    assert [cell["cell_id"] for cell in cells] == ["a0", "a1"]
    store = ResultStore(store_folder / "results.sqlite")
    stored = store.get("a0")
    store.close()
    assert cells[0]["metrics"] == stored.metrics and cells[0]["history"] == stored.history
    assert cells[0]["config"] == stored.config and cells[0]["provenance"] == stored.provenance


def test_a_misspelt_grid_is_one_line_with_the_close_match(store_folder, capsys):
    code, out, err = export(capsys, "--out", str(store_folder), "--grid", "othre")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()] and "'othre'" in err and "did you mean other?" in err


def test_without_a_store_is_one_line(tmp_path, capsys):
    code, _, err = export(capsys, "--out", str(tmp_path / "nowhere"))
    assert code == 2 and "no results store" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nowhere").exists()


def test_an_output_that_cannot_be_written_is_one_line(store_folder, capsys, tmp_path):
    code, _, err = export(capsys, "--out", str(store_folder), "--output", str(tmp_path))  # a folder
    assert code == 2 and err.strip() == f"error: --output: {tmp_path} is a folder, not a file"
    assert len(err.strip().splitlines()) == 1
