"""``bench predict``: whole scenes in blended windows, written as georeferenced rasters; checked against the tile-level
predictions, a model whose seams show, what rasterio reads back, and confusion matrices and areas computed here; and
every bad input ending in one line with nothing left under a final name."""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from grids import dataset_grid, synthetic_grid
from raster_layout import SceneSpec, pixel_grid, without_data, write_scene
from user_faults import one_line, run_main, write_grid

import bench.predict
import registry
import registry.datasets.tile_cache
from bench.data import Normalizer
from bench.device import choose_precision
from bench.grid import load_grid
from bench.models import build_model
from bench.perf import parse_arch_spec
from bench.predict import Predictor, blended_rows, inspect_scene, layout_of, pixel_size_warning, reflect
from bench.predict_outputs import SceneWriter
from bench.show import class_colours
from bench.windows import Layout, RowBand, blend_weights, window_starts
from registry.datasets.synthetic import CLASS_NAMES, MEAN, STD, SyntheticScenes

ARCH = "unet:base_channels=4,depth=3"  # the tiny grid's architecture, as --arch gives it
TILE = 32  # the tiny grid's tile side
PIXEL_M2 = 0.25 ** 2  # raster_layout's pixels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(grid file, output folder) of the tiny grid run for two epochs: one finished cell and its best.pt."""
    folder = tmp_path_factory.mktemp("trained")
    grid = write_grid(folder, synthetic_grid(epochs=2))
    from bench.cli import main
    assert main(["run", "--grid", str(grid), "--out", str(folder / "runs")]) == 0
    return grid, folder / "runs"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Georeferenced scenes and their label rasters: ``a`` 100 x 130 (no multiple of anything), ``tiles`` 64 x 96
    (2 x 3 tiles), ``holes`` with a nodata block in its labels."""
    root = tmp_path_factory.mktemp("scenes")
    written = {name: write_scene(root, spec) for name, spec in {
        "a": SceneSpec("a", 100, 130), "tiles": SceneSpec("tiles", 64, 96, seed=1),
        "holes": SceneSpec("holes", 70, 50, seed=2, nodata=255)}.items()}
    return root, written


@pytest.fixture(scope="module")
def spread_weights(tmp_path_factory) -> Path:
    """The tiny architecture with weights that predict several classes (a fresh or briefly trained one predicts one
    alone), saved as a state_dict."""
    torch.manual_seed(0)
    model = registry.create_arch("unet", num_classes=5, in_chans=3, base_channels=4, depth=3)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=noise) * 0.5)
    path = tmp_path_factory.mktemp("weights") / "spread.pt"
    torch.save(model.state_dict(), path)
    return path


def predict(capsys, grid: Path, *args: str) -> tuple[int, str, str]:
    return run_main(capsys, "predict", "--grid", str(grid), "--device", "cpu", *args)


def read_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as source:
        return source.read(1)


def left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- the windows -----------------------------------------------------------------------------------------------------


def test_reflection_is_numpys_and_windows_cover_the_padded_scene():
    for length in (1, 2, 5):
        padded = np.pad(np.arange(length), 11, mode="reflect") if length > 1 else np.zeros(23, int)
        assert (reflect(np.arange(-11, length + 11), length) == padded).all()
    assert window_starts(96, 32, 24, 4) == [-4, 20, 44, 68]  # at the stride, the last ending at the padding's end
    assert window_starts(100, 32, 24, 4) == [-4, 20, 44, 68, 72]  # the last moved back to end at 104
    assert window_starts(10, 32, 24, 4) == [-4]
    assert window_starts(96, 32, 32, 0) == [0, 32, 64]


def test_blending_weights_of_every_pixel_sum_to_one():
    """Windows of probability 1 give 1 everywhere, every row once, top to bottom; at the regular stride the raw
    weights alone are a partition of unity."""
    for height, width, overlap in ((70, 90, 8), (100, 31, 5), (20, 20, 0), (64, 96, 16)):
        layout = Layout(height, width, 32, overlap)
        band, rows = RowBand(layout, 1, torch.device("cpu")), []
        for y, x in layout.windows():
            rows += band.add(y, x, torch.ones(1, 32, 32))
        rows += band.finish()
        assert [row for row, _ in rows] == list(np.cumsum([0] + [p.shape[1] for _, p in rows[:-1]]))
        blended = torch.cat([p for _, p in rows], dim=1)
        assert blended.shape == (1, height, width)
        assert torch.allclose(blended, torch.ones_like(blended), atol=1e-6)
    layout = Layout(96, 96, 32, 8)  # windows at -4, 20, 44 and 68: all at the stride
    total = np.zeros((layout.height + 8, layout.width + 8))
    for y, x in layout.windows():
        total[y + 4:y + 36, x + 4:x + 36] += blend_weights(32, 8).numpy()
    # inside the scene, where two windows' ramps meet (by its border a window's ramp is alone: divided by itself)
    assert np.allclose(total[8:-8, 8:-8], 1.0, atol=1e-6)


class WindowPosition(torch.nn.Module):
    """Two classes whose logit difference is a smooth function of the image and of the position in the window: a
    model that leaves a seam at every window border unless windows are blended."""

    size_divisor = 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        ramp = torch.linspace(-1.0, 1.0, w).expand(n, 1, h, w)
        logit = 0.5 * images[:, :1] + 2.0 * ramp
        return torch.cat([logit, torch.zeros_like(logit)], dim=1)


def toy_predictor(model: torch.nn.Module, names=("a", "b")) -> Predictor:
    cpu = torch.device("cpu")
    return Predictor(model, "toy", tuple(names), Normalizer((0.5,) * 3, (0.25,) * 3, cpu), TILE, 1.0, None, 3,
                     np.dtype("uint8"), cpu, choose_precision(cpu, False), 8)


def write_gradient(path: Path, height: int, width: int) -> Path:
    """A smooth three-band scene: a gentle ramp across it."""
    ramp = np.round(np.linspace(40, 200, width))[None, None, :].repeat(height, 1).repeat(3, 0).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=3, dtype="uint8",
                       crs="EPSG:2180", transform=pixel_grid((0.0, 0.0))) as target:
        target.write(ramp)
    return path


def blended_map(predictor: Predictor, path: Path, overlap: int) -> tuple[np.ndarray, Layout]:
    scene = inspect_scene(path, predictor)
    layout = layout_of(scene, predictor, overlap)
    with torch.inference_mode():
        rows = [probs for _, probs, _ in blended_rows(predictor, scene, layout)]
    return torch.cat(rows, dim=1)[0].numpy(), layout


def test_no_seam_at_window_borders(tmp_path):
    """Without overlap the jump across a window border is many times the model's own change from pixel to pixel;
    blended, it is no larger than that change."""
    predictor = toy_predictor(WindowPosition())
    path = write_gradient(tmp_path / "gradient.tif", 40, 5 * TILE)
    seamed, layout = blended_map(predictor, path, 0)
    borders = [x for x in layout.columns() if x > 0]
    inside = max(np.abs(np.diff(seamed[:, x:x + TILE], axis=1)).max() for x in layout.columns())
    seam = max(np.abs(seamed[:, x] - seamed[:, x - 1]).max() for x in borders)
    assert seam > 10 * inside
    blended, layout = blended_map(predictor, path, TILE // 4)
    edges = {e for x in layout.columns() for e in (x, x + layout.window) if 0 < e < blended.shape[1]}
    jump = max(np.abs(blended[:, e] - blended[:, e - 1]).max() for e in edges)
    assert jump <= 1.5 * inside, (jump, inside, seam)


# -- end to end ------------------------------------------------------------------------------------------------------


def tile_predictions(weights: Path, image: np.ndarray) -> np.ndarray:
    """The weights applied tile by tile, as bench show and training's evaluation apply them: image ``[3, H, W]`` cut
    into 32-pixel tiles, one batch, normalised by the dataset's mean and std; class indices ``[H, W]``."""
    cpu = torch.device("cpu")
    model = build_model(parse_arch_spec(ARCH), 5, 3, cpu).module
    model.load_state_dict(torch.load(weights))
    model.eval()
    _, height, width = image.shape
    tiles = [image[:, y:y + TILE, x:x + TILE].transpose(1, 2, 0) for y in range(0, height, TILE)
             for x in range(0, width, TILE)]
    batch = torch.from_numpy(np.stack(tiles))
    with torch.inference_mode():
        labels = model(Normalizer(MEAN, STD, cpu).scale(batch.permute(0, 3, 1, 2).float(), batch.dtype)).argmax(1)
    rows = [np.concatenate(list(labels[r:r + width // TILE].numpy()), axis=1)
            for r in range(0, len(tiles), width // TILE)]
    return np.concatenate(rows, axis=0)


def test_windows_that_are_tiles_give_the_tile_predictions(trained, scenes, spread_weights, tmp_path, capsys):
    grid, _ = trained
    _, written = scenes
    code, _, err = predict(capsys, grid, str(written["tiles"].image_path), "--arch", ARCH, "--weights",
                           str(spread_weights), "--overlap", "0", "--output", str(tmp_path / "maps"))
    assert code == 0, err
    predicted = read_band(tmp_path / "maps" / "tiles_classes.tif")
    expected = tile_predictions(spread_weights, written["tiles"].image)
    assert len(np.unique(expected)) >= 2  # a model that predicts one class would prove nothing
    assert (predicted == expected).all()


@pytest.mark.parametrize("cog", [False, True], ids=["tiled", "cog"])
def test_the_map_reads_back_on_the_sources_grid_with_its_colours_and_names(cog, trained, scenes, tmp_path, capsys):
    grid, out = trained
    root, written = scenes
    maps = tmp_path / "maps"
    code, text, err = predict(capsys, grid, str(root / "images"), "--out", str(out), "--output", str(maps),
                              "--confidence", *(["--cog"] if cog else []))
    assert code == 0, err
    assert "road" in text and "hectares" in text
    colours = np.round(class_colours(CLASS_NAMES) * 255).astype(int)
    for name, scene in written.items():
        with rasterio.open(scene.image_path) as source, rasterio.open(maps / f"{name}_classes.tif") as target:
            assert (target.crs, target.transform, target.shape) == (source.crs, source.transform, source.shape)
            assert target.dtypes == ("uint8",) and target.count == 1 and target.compression.name == "deflate"
            assert target.block_shapes == [(512, 512) if cog else (256, 256)]
            assert (target.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG") == cog
            table = target.colormap(1)
            assert [table[i][:3] for i in range(5)] == [tuple(c) for c in colours]
            assert json.loads(target.tags()["CLASS_NAMES"]) == list(CLASS_NAMES)
            assert [target.tags(1)[f"CLASS_{i}"] for i in range(5)] == list(CLASS_NAMES)
            classes = target.read(1)
        with rasterio.open(maps / f"{name}_confidence.tif") as confidence:
            assert (confidence.crs, confidence.transform, confidence.shape) == (target.crs, target.transform,
                                                                                target.shape)
            assert confidence.read(1).min() >= 255 // 5  # the winner of five classes has at least a fifth
        assert classes.max() < 5
    assert not [name for name in left_in(maps) if name.startswith(".") or name.endswith(".aux.xml")]


def test_the_area_table_sums_to_the_scene(trained, scenes, spread_weights, tmp_path, capsys):
    grid, _ = trained
    _, written = scenes
    code, _, err = predict(capsys, grid, str(written["a"].image_path), "--arch", ARCH, "--weights",
                           str(spread_weights), "--output", str(tmp_path))
    assert code == 0, err
    with open(tmp_path / "a_areas.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["class"] for row in rows] == list(CLASS_NAMES)
    counts = np.bincount(read_band(tmp_path / "a_classes.tif").ravel(), minlength=5)
    assert [int(row["pixels"]) for row in rows] == counts.tolist()
    assert sum(int(row["pixels"]) for row in rows) == 100 * 130
    assert sum(float(row["share"]) for row in rows) == pytest.approx(1.0, abs=1e-5)
    assert sum(float(row["hectares"]) for row in rows) == pytest.approx(100 * 130 * PIXEL_M2 / 1e4, abs=1e-5)


def numpy_confusion(predicted: np.ndarray, truth: np.ndarray, nodata: int | None) -> np.ndarray:
    keep = truth != nodata if nodata is not None else np.ones(truth.shape, bool)
    matrix = np.zeros((5, 5), np.int64)
    np.add.at(matrix, (truth[keep].astype(int), predicted[keep].astype(int)), 1)
    return matrix


def test_scene_scores_are_those_of_a_confusion_matrix_of_the_maps(trained, scenes, spread_weights, tmp_path,
                                                                    capsys):
    grid, _ = trained
    root, written = scenes
    code, text, err = predict(capsys, grid, str(root / "images"), "--arch", ARCH, "--weights", str(spread_weights),
                              "--output", str(tmp_path), "--labels", str(root / "labels" / "{stem}.tif"), "--tta")
    assert code == 0, err
    assert "scene-level scores" in text
    figures = json.loads((tmp_path / "scores.json").read_text())
    total = np.zeros((5, 5), np.int64)
    for name, scene in written.items():
        matrix = numpy_confusion(read_band(tmp_path / f"{name}_classes.tif"), read_band(scene.label_path),
                                 255 if name == "holes" else None)
        stored = figures["scenes"][str(scene.image_path)]
        assert stored["confusion_matrix"] == matrix.tolist()
        assert stored["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
        union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
        present = union > 0
        assert stored["miou"] == pytest.approx(np.mean(np.diag(matrix)[present] / union[present]))
        total += matrix
    assert figures["all"]["confusion_matrix"] == total.tolist()
    assert figures["scenes"][str(written["holes"].image_path)]["pixels"] < 70 * 50  # the nodata block is left out
    with open(tmp_path / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["scene"] for row in rows][-1] == "all"
    assert float(rows[-1]["miou"]) == pytest.approx(figures["all"]["miou"], abs=1e-6)


def test_a_cells_scene_scores_are_stored_and_shown_in_the_leaderboard(trained, scenes, tmp_path, capsys):
    """With a cell of the store, the scores over all the scenes go beside its figures: in the store, as the
    leaderboard's "scene mIoU" column, and in bench export's CSV."""
    import shutil

    grid, runs = trained
    out = shutil.copytree(runs, tmp_path / "runs")  # the module's store stays as it was for the other tests
    root, _ = scenes
    code, _, err = predict(capsys, grid, str(root / "images"), "--out", str(out), "--output", str(tmp_path / "maps"),
                           "--labels", str(root / "labels" / "{stem}.tif"))
    assert code == 0, err
    every = json.loads((tmp_path / "maps" / "scores.json").read_text())["all"]
    from bench.store import ResultStore
    with ResultStore(out / "results.sqlite", readonly=True) as store:
        (row,) = store.rows()
    assert row.metrics["scene"]["miou"] == pytest.approx(every["miou"])
    assert len(row.metrics["scene"]["scenes"]) == 3 and row.metrics["best_miou"] is not None  # its own figures kept
    board = (out / "leaderboard.md").read_text()
    header = next(line for line in board.splitlines() if "scene mIoU" in line)
    value = board.splitlines()[board.splitlines().index(header) + 2]
    column = [c.strip() for c in header.split("|")].index("scene mIoU")
    assert value.split("|")[column].strip() == f"{every['miou']:.3f}"
    code, text, err = run_main(capsys, "export", "--out", str(out))
    assert code == 0, err
    exported = list(csv.DictReader(text.splitlines()))
    assert float(exported[0]["scene_miou"]) == pytest.approx(every["miou"])
    assert "scene_iou_road" in exported[0]


# -- pixels without data -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hole", ["nodata value", "mask"])
def test_pixels_without_data_are_nodata_in_every_output_and_left_out_of_areas_and_scores(
        hole, trained, spread_weights, tmp_path, capsys):
    """A scene whose bottom right has no data (a nodata value on every band, or an internal mask): the class map
    holds 255 there and the confidence 0, each its file's nodata value, and a class and its probability elsewhere;
    the area table gives the hole its own row and still sums to the scene; the
    quicklook is transparent there; and the scores leave those pixels out, against a confusion matrix computed here."""
    grid, _ = trained
    spec = SceneSpec("hole", 90, 70, seed=3, nodata=255, **({"image_nodata": 0} if hole == "nodata value" else
                                                            {"image_mask": True}))
    scene = write_scene(tmp_path / "in", spec)
    missing = without_data(scene.image_path)
    assert 0 < missing.sum() < missing.size
    maps = tmp_path / "maps"
    code, text, err = predict(capsys, grid, str(scene.image_path), *weights(spread_weights), "--output", str(maps),
                              "--confidence", "--labels", str(scene.label_path), *(["--cog"] if hole == "mask" else []))
    assert code == 0, err
    with rasterio.open(maps / "hole_classes.tif") as target:
        classes = target.read(1)
        assert target.nodata == 255 and target.colormap(1)[255][3] == 0
    with rasterio.open(maps / "hole_confidence.tif") as target:
        confidence = target.read(1)
        assert target.nodata == 0
    assert (classes == 255).tolist() == missing.tolist() and (confidence == 0).tolist() == missing.tolist()
    assert classes[~missing].max() < 5 and confidence[~missing].min() >= 255 // 5
    assert len(np.unique(classes[~missing])) >= 2

    with open(maps / "hole_areas.csv") as f:
        rows = {row["class"]: row for row in csv.DictReader(f)}
    assert list(rows) == [*CLASS_NAMES, "no data"]
    assert int(rows["no data"]["pixels"]) == missing.sum()
    assert [int(rows[name]["pixels"]) for name in CLASS_NAMES] == np.bincount(classes[~missing], minlength=5).tolist()
    assert sum(int(row["pixels"]) for row in rows.values()) == 90 * 70
    assert sum(float(row["share"]) for row in rows.values()) == pytest.approx(1.0, abs=1e-5)
    assert sum(float(row["hectares"]) for row in rows.values()) == pytest.approx(90 * 70 * PIXEL_M2 / 1e4, abs=1e-5)
    assert "no data" in text

    from PIL import Image
    quicklook = np.asarray(Image.open(maps / "hole_quicklook.png"))
    assert quicklook.shape == (90, 70, 4) and (quicklook[..., 3] == 0).tolist() == missing.tolist()

    scored = json.loads((maps / "scores.json").read_text())["all"]
    truth = scene.label.copy()
    truth[missing] = 255  # no data in the image: not scored, whatever the label says
    assert scored["confusion_matrix"] == numpy_confusion(classes, truth, 255).tolist()


def test_a_scene_without_nodata_keeps_its_outputs_as_they_were(trained, scenes, spread_weights, tmp_path, capsys):
    """No nodata value, no mask: no nodata in the outputs, an RGB quicklook and no "no data" row."""
    grid, _ = trained
    _, written = scenes
    code, _, err = predict(capsys, grid, str(written["a"].image_path), *weights(spread_weights), "--output",
                           str(tmp_path), "--confidence")
    assert code == 0, err
    for kind in ("classes", "confidence"):
        with rasterio.open(tmp_path / f"a_{kind}.tif") as target:
            assert target.nodata is None
    from PIL import Image
    assert Image.open(tmp_path / "a_quicklook.png").mode == "RGB"
    assert "no data" not in (tmp_path / "a_areas.csv").read_text()


# -- the scenes' ground scale ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rasters_grid(scenes, tmp_path_factory) -> Path:
    """A grid on the dataset ``rasters`` over the scenes (0.25 m pixels), in tiles of the tiny architecture's side."""
    root, _ = scenes
    folder = tmp_path_factory.mktemp("rasters-grid")
    return write_grid(folder, dataset_grid("ground scale", f"""name = "rasters"
root = "{root}"
classes = {json.dumps(list(CLASS_NAMES))}
tile_size = {TILE}
split = {{ train = 0.5, val = 0.5 }}
cache_dir = "{folder / 'cache'}"
"""))


@pytest.mark.parametrize("pixel, warned", [(0.25, False), (0.3, False), (0.5, True), (0.1, True)])
def test_a_scene_at_another_ground_scale_than_the_training_scenes_is_warned_of(pixel, warned, rasters_grid,
                                                                              spread_weights, tmp_path, capsys):
    """The training scenes have 0.25 m pixels: a scene within 1.25 times of that is mapped without a word; one
    farther off is mapped too, with one warning line that says by how much and how to resample it."""
    scene = write_scene(tmp_path, SceneSpec("far", 40, 40, pixel=pixel))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = predict(capsys, rasters_grid, str(scene.image_path), *weights(spread_weights), "--output",
                               str(tmp_path / "maps"))
    assert code == 0, err
    assert (tmp_path / "maps" / "far_classes.tif").exists()
    lines = [str(w.message) for w in caught if "on the ground" in str(w.message)]
    if warned:
        (line,) = lines
        assert f"its pixels are {pixel:g} m" in line and "the training scenes' 0.25 m" in line
        assert f"{0.25 / pixel:.2g} times the size it learned" in line and "gdalwarp -tr 0.25 0.25" in line
    else:
        assert lines == []


def test_no_ground_scale_is_checked_without_both_pixel_sizes(tmp_path):
    """Training data of unknown pixel size (the synthetic scenes), or a scene without a projected CRS: no check."""
    path = write_gradient(tmp_path / "gradient.tif", 40, 40)  # 0.25 m pixels
    unknown = toy_predictor(WindowPosition())
    assert pixel_size_warning(inspect_scene(path, unknown), unknown) is None
    known = replace(unknown, pixel_sizes=(1.0,))
    assert "its pixels are 0.25 m" in pixel_size_warning(inspect_scene(path, known), known)
    with rasterio.open(path, "r+") as raster:
        raster.crs = "EPSG:4326"  # degrees
    assert pixel_size_warning(inspect_scene(path, known), known) is None


class Counting:
    """A function wrapped to count its calls."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.mark.parametrize("scale", [1.0, 0.75])
def test_a_scene_scale_gives_a_map_on_the_source_grid(scale, trained, scenes, spread_weights, tmp_path, capsys,
                                                      monkeypatch):
    """0.75: windows of 43 source pixels resized to the 32-pixel tiles and the probabilities back; 1: no
    resampling at all."""
    grid, _ = trained
    _, written = scenes
    monkeypatch.setattr(SyntheticScenes, "scale", scale, raising=False)
    resize = Counting(registry.datasets.tile_cache.cv2.resize)
    monkeypatch.setattr(registry.datasets.tile_cache.cv2, "resize", resize)
    interpolate = Counting(torch.nn.functional.interpolate)
    monkeypatch.setattr(bench.predict, "F", SimpleNamespace(interpolate=interpolate))
    code, _, err = predict(capsys, grid, str(written["a"].image_path), "--arch", ARCH, "--weights",
                           str(spread_weights), "--output", str(tmp_path))
    assert code == 0, err
    with rasterio.open(written["a"].image_path) as source, rasterio.open(tmp_path / "a_classes.tif") as target:
        assert (target.crs, target.transform, target.shape) == (source.crs, source.transform, source.shape)
    windows = len(Layout(100, 130, round(TILE / scale), round(8 / scale)))
    assert (resize.calls, interpolate.calls) == ((0, 0) if scale == 1 else (windows, -(-windows // 8)))


# -- bad input -------------------------------------------------------------------------------------------------------


def unfinished_cell(grid: Path) -> list[str]:
    other = load_grid(str(grid), overrides=["axes.fractions=[0.5, 0.25]"])
    cell = next(c for c in other.cells if c.fraction == 0.25)
    return ["--set", "axes.fractions=[0.5, 0.25]", "--cell", cell.cell_id]


def bad_scene(kind: str):
    def write(root: Path) -> Path:
        if kind == "text":
            path = root / "bad.tif"
            path.write_text("not a raster\n")
            return path
        if kind == "bands":
            return write_scene(root, SceneSpec("four", 40, 40, bands=4)).image_path
        if kind == "label value":
            return write_scene(root, SceneSpec("odd", 70, 40, label_values={c: 9 for c in range(5)})).image_path
        path = write_scene(root, SceneSpec("cut", 300, 300, seed=2)).image_path  # uncompressed, stripped
        path.write_bytes(path.read_bytes()[:150_000])
        return path
    return write


def weights(path: Path, arch: str = ARCH) -> list[str]:
    return ["--arch", arch, "--weights", str(path)]


# name -> (a scene writer or None for scene a, arguments (a function of the grid and a weights file), fragments)
BAD = {
    "an unknown cell": (None, lambda grid, w: ["--cell", "f00d"], ["--cell f00d: no cell of grid"]),
    "an unfinished cell": (None, lambda grid, w: unfinished_cell(grid), ["has not run"]),
    "another band count": (bad_scene("bands"), lambda grid, w: weights(w),
                           ["has 4 bands; the grid's training data has 3"]),
    "an unreadable raster": (bad_scene("text"), lambda grid, w: weights(w), ["bad.tif: cannot read this raster"]),
    "a truncated raster": (bad_scene("cut"), lambda grid, w: weights(w), ["cut.tif: cannot read this raster"]),
    "a missing label raster": (None, lambda grid, w: ["--labels", "nowhere/{stem}.tif"],
                               ["no label raster nowhere/a.tif for"]),
    "a label value that is no class": (bad_scene("label value"),
                                       lambda grid, w: [*weights(w), "--labels", "{folder}/../labels/{stem}.tif"],
                                       ["value 9", "is no class"]),
    "weights that do not fit": (None, lambda grid, w: weights(w, "unet:base_channels=8,depth=3"),
                                ["does not fit unet:base_channels=8,depth=3"]),
    "weights without --arch": (None, lambda grid, w: ["--weights", str(w)], ["--weights needs --arch"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_leaves_no_file(case, trained, scenes, spread_weights, tmp_path, capsys):
    grid, out = trained
    _, written = scenes
    write, arguments, fragments = BAD[case]
    image = write(tmp_path) if write is not None else written["a"].image_path
    maps = tmp_path / "maps"
    code, _, err = predict(capsys, grid, str(image), "--out", str(out), "--output", str(maps),
                           *arguments(grid, spread_weights))
    one_line(code, err, 2, *fragments)
    assert left_in(maps) == []


def test_an_output_folder_that_cannot_be_written_is_one_line(trained, scenes, tmp_path, capsys):
    grid, out = trained
    _, written = scenes
    (tmp_path / "taken").write_text("a file where the folder should be\n")
    code, _, err = predict(capsys, grid, str(written["a"].image_path), "--out", str(out), "--output",
                           str(tmp_path / "taken"))
    one_line(code, err, 2, "is a file, not a folder")


def test_a_failure_mid_scene_removes_its_files(trained, scenes, spread_weights, tmp_path, capsys, monkeypatch):
    """Whatever stops a scene halfway (here a write that fails on its third band of rows) leaves nothing of it."""
    grid, _ = trained
    _, written = scenes
    calls = []
    original = SceneWriter.write

    def failing(self, row, probs, valid):
        calls.append(row)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        original(self, row, probs, valid)

    monkeypatch.setattr(SceneWriter, "write", failing)
    code, _, err = predict(capsys, grid, str(written["a"].image_path), "--arch", ARCH, "--weights",
                           str(spread_weights), "--output", str(tmp_path / "maps"))
    one_line(code, err, 2, "No space left on device")
    assert left_in(tmp_path / "maps") == []
