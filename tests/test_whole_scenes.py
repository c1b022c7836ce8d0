"""Scene-level evaluation in grids: a dataset's test scenes mapped whole with each cell's best weights after training,
scored against a confusion matrix computed here from ``bench predict``'s maps and the label rasters as written
(``bench predict --labels`` reading them with the grid's class table), and a cell stopped in its scene scoring
resuming with it, without training again."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from grids import dataset_grid
from raster_layout import SceneSpec, without_data, write_layout

import bench.whole_scenes
import registry
from bench.cli import main
from bench.grid import parse_grid
from bench.outputs import OutputFolder
from bench.runner import RunEvents, run_grid
from bench.store import ResultStore

CLASSES = ["background", "building", "woodland", "water", "road"]
VALUES = {index: 10 * (index + 1) for index in range(len(CLASSES))}  # label rasters hold 10, 20, ... 50
NODATA = 255
SIZES = [(150, 130), (170, 140), (130, 190), (160, 120)]
SPLIT = {"train": 0.5, "val": 0.25, "test": 0.25}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Scenes whose label values need the grid's class table, with a nodata block in their labels and a block their
    images' masks hide, and sides no multiple of the 64-pixel tiles (their edges are scored whole although edge =
    "drop" leaves them out of the tiles)."""
    root = tmp_path_factory.mktemp("whole-scenes")
    written = write_layout(root, [SceneSpec(f"s{i}", h, w, 3, "uint8", seed=i, nodata=NODATA, label_values=VALUES,
                                            image_mask=True) for i, (h, w) in enumerate(SIZES)])
    return root, written


def write_grid(tmp_path: Path, root: Path) -> Path:
    values = ", ".join(f"{name} = {VALUES[index]}" for index, name in enumerate(CLASSES))
    path = tmp_path / "rasters.toml"
    path.write_text(dataset_grid("whole test scenes", f"""name = "rasters"
root = "{root}"
classes = {json.dumps(CLASSES)}
values = {{ {values} }}
tile_size = 64
edge = "drop"
split = {json.dumps(SPLIT).replace(":", " =")}
cache_dir = "{tmp_path / 'cache'}"
"""), encoding="utf-8")
    return path


def scene_images(root: Path, tmp_path: Path) -> list[Path]:
    """The images of the dataset's test scenes, as the dataset names them."""
    dataset = registry.create_dataset("rasters", root=str(root), classes=CLASSES,
                                      values=dict(zip(CLASSES, VALUES.values(), strict=True)), tile_size=64,
                                      edge="drop", split=SPLIT, cache_dir=str(tmp_path / "cache"))
    assert dataset.test_scenes, "the fixture's split has test scenes"
    return [Path(scene.image) for scene in dataset.test_scenes]


def done_metrics(out: Path) -> dict:
    with ResultStore(out / "results.sqlite", readonly=True) as store:
        (row,) = store.rows("done")
    return row.metrics


def numpy_scores(matrix: np.ndarray) -> dict:
    union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    iou = np.where(union > 0, np.diag(matrix) / np.maximum(union, 1), np.nan)
    return {"miou": float(np.nanmean(iou)), "iou": iou, "accuracy": float(np.trace(matrix) / matrix.sum()),
            "pixels": int(matrix.sum())}


def test_a_grid_scores_its_test_scenes_whole_as_bench_predict_maps_them(scenes, tmp_path, capsys):
    root, written = scenes
    grid, out, board = write_grid(tmp_path, root), tmp_path / "runs", tmp_path / "leaderboard.md"
    assert main(["run", "--grid", str(grid), "--out", str(out), "--leaderboard", str(board)]) == 0
    scene = done_metrics(out)["scene"]
    images = scene_images(root, tmp_path)
    assert scene["scenes"] == sorted(str(path) for path in images) and scene["tta"] is False

    # The same weights' maps of the same scenes through bench predict, which reads the label rasters with the grid's
    # class table too; and both scored here against the labels as written.
    capsys.readouterr()
    assert main(["predict", "--grid", str(grid), "--out", str(out), "--best", *map(str, images),
                 "--output", str(tmp_path / "maps"), "--labels", str(root / "labels" / "{stem}.tif")]) == 0, \
        capsys.readouterr().err
    predicted_scores = json.loads((tmp_path / "maps" / "scores.json").read_text())["all"]
    matrix = np.zeros((len(CLASSES),) * 2, np.int64)
    for image in images:
        with rasterio.open(tmp_path / "maps" / f"{image.stem}_classes.tif") as source:
            predicted = source.read(1).astype(int)
        truth = written[image.stem]
        annotated = (truth.label != NODATA) & ~without_data(image)  # no data in the image: not scored
        np.add.at(matrix, (truth.classes[annotated].astype(int), predicted[annotated]), 1)
    expected = numpy_scores(matrix)
    assert predicted_scores["confusion_matrix"] == matrix.tolist()
    assert scene["pixels"] == expected["pixels"] < sum(int((written[p.stem].label != NODATA).sum()) for p in images)
    assert scene["miou"] == pytest.approx(expected["miou"]) and scene["accuracy"] == pytest.approx(expected["accuracy"])
    for index, name in enumerate(CLASSES):
        iou = expected["iou"][index]
        assert (scene["iou"][name] is None) if math.isnan(iou) else scene["iou"][name] == pytest.approx(iou), name

    text = board.read_text()
    header = next(line for line in text.splitlines() if "scene mIoU" in line)
    row = text.splitlines()[text.splitlines().index(header) + 2]
    column = [c.strip() for c in header.split("|")].index("scene mIoU")
    assert row.split("|")[column].strip() == f"{scene['miou']:.3f}"
    assert "the dataset's test scenes" in text


class StopScoring:
    """WholeTestScenes.score interrupted (a Ctrl-C) the first time, counted after."""

    def __init__(self, score):
        self.score, self.calls = score, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise KeyboardInterrupt
        return self.score(*args, **kwargs)


class CountSteps(RunEvents):
    def __init__(self):
        self.steps = 0

    def step(self, cell, step, total):
        self.steps += 1


def test_a_cell_stopped_in_its_scene_scoring_resumes_with_it_without_training(scenes, tmp_path, monkeypatch):
    root, _ = scenes
    path = write_grid(tmp_path, root)
    grid = parse_grid(path.read_text(), path)
    stopping = StopScoring(bench.whole_scenes.WholeTestScenes.score)
    monkeypatch.setattr(bench.whole_scenes.WholeTestScenes, "score",
                        lambda self, *args, **kwargs: stopping(self, *args, **kwargs))
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, OutputFolder(tmp_path / "runs"), CPU, RunEvents())
    events = CountSteps()
    summary = run_grid(grid, OutputFolder(tmp_path / "runs"), CPU, events)
    assert summary.done == [grid.cells[0].cell_id] and events.steps == 0 and stopping.calls == 2
    resumed = done_metrics(tmp_path / "runs")["scene"]

    run_grid(grid, OutputFolder(tmp_path / "straight"), CPU, RunEvents())
    straight = done_metrics(tmp_path / "straight")["scene"]
    for key in ("miou", "accuracy", "iou", "pixels", "scenes"):
        assert resumed[key] == straight[key], key

