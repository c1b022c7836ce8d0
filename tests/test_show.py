"""bench show: the annotations and predictions figures, their choices of tiles and cells, and predictions that are
the stored evaluation's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb

from bench.cell_job import GridData
from bench.cli import main
from bench.grid import load_grid
from bench.metrics import confusion_matrix
from bench.show import PALETTE, annotations, best_cells, class_colours, overlay, predict, tiles_to_show
from bench.store import ResultStore

SMOKE = load_grid("smoke")


def stored_rows(out: Path) -> list:
    store = ResultStore(out / "results.sqlite")
    try:
        return store.rows()
    finally:
        store.close()


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
    """The smoke grid run once, its output folder with the store and best.pt of each cell."""
    work = tmp_path_factory.mktemp("show")
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--grid", "smoke", "--out", "runs"], cwd=work,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return work / "runs"


def test_overlay_colours_the_labelled_pixels_and_greys_the_rest():
    image = np.full((2, 3, 3), 255, dtype=np.uint8)
    mask = np.array([[-1, 0, 4], [-1, -1, 1]])
    colours = class_colours(["background", "building", "woodland", "water", "road"])
    out = overlay(image, mask, colours)
    assert np.allclose(out[0, 1], to_rgb(PALETTE["background"])) and np.allclose(out[0, 2], to_rgb(PALETTE["road"]))
    assert np.allclose(out[1, 2], to_rgb(PALETTE["building"]))
    assert np.allclose(out[mask < 0], 0.9)  # white, faded to grey
    assert np.allclose(class_colours(["cloud"])[0], to_rgb("C0"))  # a class the palette does not know


def test_tiles_showing_the_most_classes_first():
    masks = np.zeros((5, 4, 4), dtype=np.uint8)
    masks[3, 0, :3] = [1, 2, 3]
    masks[1, 0, :2] = [1, 2]
    masks[4, 0, :2] = [2, 4]
    assert tiles_to_show(masks, 3) == [3, 1, 4]


def test_one_annotation_per_masker_and_fraction_and_the_best_cell_of_each(smoke_out):
    grid = load_grid("smoke", overrides=['axes.maskers=["random_pixels", "full"]', "axes.fractions=[0.1, 0.2]"])
    assert [(c.masker.label, c.fraction) for c in annotations(grid)] == [("random_pixels", 0.1), ("random_pixels", 0.2)]
    rows = stored_rows(smoke_out)
    (best,) = best_cells(SMOKE, rows)  # one annotation in the smoke grid: its better architecture
    assert best.metrics["best_miou"] == max(r.metrics["best_miou"] for r in rows)
    assert best_cells(grid, rows) == [best]  # the same cell in the larger grid; its other annotations unfinished


def test_predictions_are_those_the_stored_evaluation_counted(smoke_out):
    """best.pt applied by bench show to the whole validation split gives the confusion matrix stored for its epoch."""
    rows = stored_rows(smoke_out)
    data = GridData(SMOKE)
    images, truth = data.dataset.split("val")
    for row in rows:
        cell = next(c for c in SMOKE.cells if c.cell_id == row.cell_id)
        best = smoke_out / "checkpoints" / row.cell_id / "best.pt"
        predicted = predict(cell, best, images, data, torch.device("cpu"))
        counted = confusion_matrix(torch.from_numpy(predicted), torch.from_numpy(truth.astype(np.int64)), 5)
        stored = next(h for h in row.history if h["epoch"] == row.metrics["best_epoch"])["confusion_matrix"]
        assert np.abs(counted.numpy() - np.array(stored)).sum() <= 0.001 * truth.size


def test_bench_show_writes_both_figures_and_the_leaderboard_links_them(smoke_out, tmp_path, capsys):
    out = tmp_path / "runs"
    shutil.copytree(smoke_out, out)
    board = tmp_path / "board.md"
    assert main(["show", "--grid", "smoke", "--out", str(out), "--leaderboard", str(board), "--tiles", "2"]) == 0
    names = ["synthetic-smoke-annotations.png", "synthetic-smoke-predictions.png"]
    for name in names:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](plots/{name})" in board.read_text()
    shutil.rmtree(out / "checkpoints")  # finished cells without their weights: named, not drawn
    capsys.readouterr()
    assert main(["show", "--grid", "smoke", "--out", str(out), "--leaderboard", str(board), "--tiles", "2"]) == 0
    (best,) = best_cells(SMOKE, stored_rows(out))
    assert f"not drawn: {best.label}" in " ".join(capsys.readouterr().out.split())
