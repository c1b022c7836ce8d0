"""Pixels a dataset has not annotated (``-1`` in its int8/int16 full masks): no masker labels them, the metrics skip
them, "labelled %" is a share of the annotated pixels, a split with none annotated is refused, and a grid on such a
dataset trains and scores as a float64 recomputation that skips them does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from grids import synthetic_grid
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

import registry
from bench.batches import DeviceBatches, LoaderBatches, TrainBatches
from bench.cell_job import GridData
from bench.checks import check_grid
from bench.data import AugmentedTiles, Normalizer, annotated_pixels, draw_partial, partial_masks
from bench.device import Precision
from bench.device_data import upload
from bench.grid import parse_grid
from bench.metrics import confusion_matrix, scores
from bench.outputs import OutputFolder
from bench.runner import run_grid
from bench.scoring import evaluate
from bench.show import annotations_figure, overlay, tiles_to_show
from bench.store import ResultStore
from bench.train import CellData

CPU = torch.device("cpu")
FLOAT32 = Precision(lambda: torch.autocast("cpu", enabled=False), None, "float32")
NAME = "not_annotated_scenes_for_tests"


# -- full masks with not-annotated regions ----------------------------------------------------------------------------


def region_labels(shape: tuple[int, int], rng: np.random.Generator, classes: int = 5, cell: int = 4) -> np.ndarray:
    """Classes drawn per cell of ``cell`` x ``cell`` pixels, cropped to ``shape``: regions with boundaries."""
    coarse = rng.integers(0, classes, (shape[0] // cell + 1, shape[1] // cell + 1))
    return np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:shape[0], :shape[1]]


def not_annotated(shape: tuple[int, int], rng: np.random.Generator, pattern: str) -> np.ndarray:
    """bool ``[H, W]``: where a dataset has no annotation, in one of several shapes."""
    height, width = shape
    out = np.zeros(shape, dtype=bool)
    if pattern == "nodata_border":  # a raster's nodata along two edges
        out[:int(rng.integers(1, height // 3)), :] = True
        out[:, width - int(rng.integers(1, width // 3)):] = True
    elif pattern == "rectangles":  # LoveDA-like no-data patches
        for _ in range(3):
            top, left = int(rng.integers(0, height - 2)), int(rng.integers(0, width - 2))
            out[top:top + int(rng.integers(2, height // 2)), left:left + int(rng.integers(2, width // 2))] = True
    elif pattern == "scattered":  # isolated unknown pixels
        out = rng.random(shape) < 0.15
    elif pattern == "blobs":  # DeepGlobe-like "unknown" regions: whole cells of the class grid
        out = region_labels(shape, rng, classes=4, cell=5) == 0
    elif pattern == "most":  # only a few annotated pixels left
        out = rng.random(shape) < 0.97
    elif pattern == "all":
        out[...] = True
    return out


def full_with_unknown(shape, seed: int, pattern: str) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    labels = region_labels(shape, rng)
    labels[not_annotated(shape, rng, pattern)] = -1
    return torch.from_numpy(labels.astype(np.int64))


def built(name: str):
    return registry.create_masker(name, **registry.MASKERS.entry(name).test_kwargs)


PATTERNS = ["nodata_border", "rectangles", "scattered", "blobs", "most", "all"]


@pytest.mark.parametrize("name", registry.list_maskers())
@pytest.mark.parametrize("shape", [(24, 32), (33, 47), (16, 16)])
def test_no_masker_labels_a_not_annotated_pixel(name, shape):
    """For random full masks with -1 regions, every masker's partial mask is -1 wherever the full mask is, and equals
    the full mask wherever it labels a pixel."""
    masker = built(name)
    for fraction in (0.05, 0.3, 1.0):
        if hasattr(masker, "check"):
            masker.check(*shape, fraction)
        for pattern in PATTERNS:
            for seed in range(3):
                full = full_with_unknown(shape, seed, pattern)
                partial = draw_partial(masker, full, fraction, seed, index=seed)
                assert partial.shape == full.shape and partial.dtype == torch.int64
                unknown = full < 0
                assert (partial[unknown] == -1).all(), (pattern, fraction, seed)
                labelled = partial >= 0
                assert torch.equal(partial[labelled], full[labelled]), (pattern, fraction, seed)
                assert ((partial == full) | (partial == -1)).all()
                if pattern == "all":
                    assert not labelled.any()


@pytest.mark.parametrize("name", registry.list_maskers())
@pytest.mark.parametrize("dtype, classes", [(np.int8, 5), (np.int16, 300)])
def test_partial_masks_of_int8_and_int16_full_masks(name, dtype, classes):
    """The harness's own path: full masks as a dataset gives them (int8, or int16 with class indices above 127)."""
    rng = np.random.default_rng(1)
    masks = np.stack([region_labels((24, 32), rng, classes=classes) for _ in range(4)]).astype(dtype)
    for index, pattern in enumerate(("nodata_border", "rectangles", "blobs", "all")):
        masks[index][not_annotated((24, 32), rng, pattern)] = -1
    partial = partial_masks(masks, built(name), 0.3, seed=5)
    assert partial.dtype == (np.int8 if dtype == np.int8 else np.int16)
    assert (partial[masks < 0] == -1).all()
    assert np.array_equal(partial[partial >= 0], masks[partial >= 0])


def test_fraction_is_a_share_of_the_annotated_pixels():
    full = full_with_unknown((64, 48), 0, "rectangles")
    annotated = int((full >= 0).sum())
    assert 0 < annotated < full.numel()
    random_pixels = registry.create_masker("random_pixels")
    for fraction in (0.01, 0.1, 0.5, 1.0):
        partial = draw_partial(random_pixels, full, fraction, 3, 4)
        assert int((partial >= 0).sum()) == round(fraction * annotated)
    blocks = registry.create_masker("blocks", size=4)
    for fraction in (0.1, 0.3, 0.7):
        kept = int((draw_partial(blocks, full, fraction, 3, 4) >= 0).sum())
        assert abs(kept - fraction * annotated) <= 16 / 2
    assert torch.equal(draw_partial(blocks, full, 1.0, 3, 4), full)  # every annotated pixel, in full


def test_point_maskers_click_annotated_pixels_only():
    full = full_with_unknown((32, 32), 2, "most")
    annotated = int((full >= 0).sum())
    points = registry.create_masker("points_per_image", count=20)
    assert int((draw_partial(points, full, 1.0, 0, 0) >= 0).sum()) == min(20, annotated)
    full = full_with_unknown((32, 32), 2, "blobs")
    partial = draw_partial(points, full, 1.0, 0, 0)
    assert int((partial >= 0).sum()) == 20  # all 20 points on annotated pixels
    per_class = registry.create_masker("points_per_class", k=2, min_distance=1)
    partial = draw_partial(per_class, full, 1.0, 0, 0)
    classes = full[full >= 0].unique()
    assert int((partial >= 0).sum()) == 2 * len(classes)  # k per class present, none spent on the -1 "class"


def test_eroded_takes_a_not_annotated_area_for_no_boundary():
    """One class beside a nodata band: no class boundary, so every annotated pixel keeps its label (as at the tile's
    edge); a boundary between two classes still loses its band."""
    full = torch.full((16, 16), 2, dtype=torch.int64)
    full[:, :4] = -1
    partial = draw_partial(registry.create_masker("eroded", width=2), full, 1.0, 0, 0)
    assert torch.equal(partial, full)
    full[8:, :] = torch.where(full[8:, :] >= 0, 3, -1)
    partial = draw_partial(registry.create_masker("eroded", width=2), full, 1.0, 0, 0)
    assert (partial[6:10, 4:] == -1).all() and torch.equal(partial[:5, 4:], full[:5, 4:])


def test_scribbles_draw_no_stroke_where_nothing_is_annotated():
    scribbles = registry.create_masker("scribbles", count=1, width=2, min_area=24)
    full = torch.full((24, 24), -1, dtype=torch.int64)
    assert scribbles.strokes(full, torch.Generator().manual_seed(0)) == []
    full[2:6, 2:6] = 1  # one small region: below min_area, still the largest, so it gets the stroke
    strokes = scribbles.strokes(full, torch.Generator().manual_seed(0))
    assert [s.value for s in strokes] == [1]


# -- metrics: torchmetrics as the reference ---------------------------------------------------------------------------


def random_batch(seed: int, classes: int, dtype: torch.dtype, shape=(3, 17, 19)):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, shape, generator=g)
    pred = torch.where(torch.rand(shape, generator=g) < 0.6, target, torch.randint(0, classes, shape, generator=g))
    target[torch.rand(shape, generator=g) < 0.3] = -1
    target[0, :5] = -1  # a block of unknown, with predictions under it
    return pred, target.to(dtype)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int64])
@pytest.mark.parametrize("seed", range(4))
def test_scores_match_torchmetrics_with_ignore_index(dtype, seed):
    classes = 6
    pred, target = random_batch(seed, classes, dtype)
    cm = confusion_matrix(pred, target, classes)
    assert int(cm.sum()) == int((target >= 0).sum())
    result = scores(cm)
    wide = target.to(torch.int64)
    iou = MulticlassJaccardIndex(classes, ignore_index=-1, average=None)(pred, wide)
    miou = MulticlassJaccardIndex(classes, ignore_index=-1, average="macro")(pred, wide)
    accuracy = MulticlassAccuracy(classes, ignore_index=-1, average="micro")(pred, wide)
    assert result.iou == pytest.approx(iou.double().tolist(), abs=1e-6)
    assert result.miou == pytest.approx(float(miou), abs=1e-6)
    assert result.accuracy == pytest.approx(float(accuracy), abs=1e-6)


def test_a_class_only_under_not_annotated_pixels_counts_nowhere():
    """Class 3 is predicted only where the truth is -1: it is absent from the counts, and from the mean."""
    classes = 4
    pred, target = random_batch(9, 3, torch.int8)
    pred = torch.where(target < 0, 3, pred)
    cm = confusion_matrix(pred, target, classes)
    assert int(cm[:, 3].sum()) == 0 and int(cm[3].sum()) == 0
    result = scores(cm)
    assert np.isnan(result.iou[3])
    miou = MulticlassJaccardIndex(classes, ignore_index=-1, average="macro")(pred, target.to(torch.int64))
    assert result.miou == pytest.approx(float(miou), abs=1e-6)


class FixedModel(torch.nn.Module):
    """A 1x1 convolution with fixed weights: predictions that vary with the pixels."""

    def __init__(self, classes: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, classes, 1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g))

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
def test_evaluation_skips_not_annotated_pixels_on_both_data_paths(dtype):
    """bench.scoring.evaluate with masks as NumPy arrays (the loader path) and uploaded tensors (the device path):
    the same counts, those of torchmetrics with ignore_index=-1, over the annotated pixels only."""
    classes = 5
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    masks = rng.integers(0, classes, (7, 16, 16)).astype(dtype)
    masks[rng.random(masks.shape) < 0.25] = -1
    masks[2] = -1  # a tile with nothing annotated
    model = FixedModel(classes)
    normalize = Normalizer((0.5,) * 3, (0.25,) * 3, CPU)
    on_loader = evaluate(model, images, masks, classes, normalize, 3, FLOAT32)
    on_device = evaluate(model, upload(images, CPU), upload(masks, CPU), classes, normalize, 3, FLOAT32)
    assert on_loader == on_device
    cm = np.array(on_loader["confusion_matrix"])
    assert cm.sum() == int((masks >= 0).sum())
    with torch.no_grad():
        pred = model(normalize(torch.from_numpy(images), torch.from_numpy(masks))[0]).argmax(1)
    target = torch.from_numpy(masks.astype(np.int64))
    assert on_loader["miou"] == pytest.approx(
        float(MulticlassJaccardIndex(classes, ignore_index=-1, average="macro")(pred, target)), abs=1e-6)
    assert on_loader["accuracy"] == pytest.approx(
        float(MulticlassAccuracy(classes, ignore_index=-1, average="micro")(pred, target)), abs=1e-6)


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
def test_training_batches_keep_not_annotated_pixels_at_minus_one(dtype):
    """Unaugmented, both training paths hand the loss the masks as they are, -1 included; augmented, no -1 pixel
    becomes a label that was not somewhere in the tile."""
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    masks = rng.integers(0, 5, (4, 16, 16)).astype(dtype)
    masks[:, :5] = -1
    normalize = Normalizer((0.5,) * 3, (0.25,) * 3, CPU)
    device = DeviceBatches(images, masks, [], 0, 2, normalize)
    loader = LoaderBatches(TrainBatches(AugmentedTiles(images, masks, [], 0), 2, 0, False), normalize)
    for (_, a), (_, b) in zip(device.epoch(0), loader.epoch(0), strict=True):
        assert a.dtype == b.dtype == torch.int64 and torch.equal(a, b)
        assert (a == -1).sum() == 2 * 5 * 16
    augment = ["hflip", "rot90", "shift_scale_rotate"]
    for batches in (DeviceBatches(images, masks, augment, 0, 2, normalize),
                    LoaderBatches(TrainBatches(AugmentedTiles(images, masks, augment, 0), 2, 0, False), normalize)):
        for _, target in batches.epoch(1):
            assert target.min() >= -1 and target.max() < 5 and (target == -1).any()


# -- "labelled %", the split checks, the pictures ---------------------------------------------------------------------


def test_labelled_fraction_is_a_share_of_the_annotated_pixels():
    masks = np.zeros((2, 4, 4), np.int8)
    partial = np.full((2, 4, 4), -1, np.int8)
    partial[0, 0, :2] = 1
    tiles = np.zeros((2, 4, 4, 3), np.uint8)
    data = CellData(tiles, partial, tiles, masks, 2, (0.5,) * 3, (0.2,) * 3, train_annotated=8)
    assert data.labelled_fraction == 2 / 8
    assert CellData(tiles, partial, tiles, masks, 2, (0.5,) * 3, (0.2,) * 3).labelled_fraction == 2 / 32
    full = np.zeros((2, 4, 4), np.int8)
    assert annotated_pixels(full) is None and annotated_pixels(full.astype(np.uint8)) is None
    full[1] = -1
    assert annotated_pixels(full) == 16


class NotAnnotatedScenes:
    """A plugin's dataset: the synthetic scenes with int8 masks that are -1 where they are not annotated (a nodata
    band along the left edge, a rectangle, scattered pixels; one training tile not annotated at all), or with one
    split not annotated anywhere (``blank``)."""

    def __init__(self, tile_size: int = 32, train_size: int = 8, val_size: int = 4, test_size: int = 4,
                 blank: str = "", root=None, cache_dir=None):
        base = registry.create_dataset("synthetic", tile_size=tile_size, train_size=train_size, val_size=val_size,
                                       test_size=test_size)
        self.num_classes, self.class_names, self.in_chans = base.num_classes, base.class_names, base.in_chans
        self.mean, self.std, self.splits = base.mean, base.std, base.splits
        self._splits = {}
        for number, name in enumerate(self.splits):
            images, masks = base.split(name)
            masks = masks.astype(np.int8)
            rng = np.random.default_rng(number)
            for tile in masks:
                tile[not_annotated(tile.shape, rng, "rectangles") | (rng.random(tile.shape) < 0.1)] = -1
                tile[:, :int(rng.integers(1, 6))] = -1
            if name == "train" and len(masks) > 1:
                masks[1] = -1
            if name == blank:
                masks[...] = -1
            self._splits[name] = (images, masks)

    def split(self, name: str):
        return self._splits[name]


@pytest.fixture
def plugin_dataset():
    registry.register_dataset(NAME)(NotAnnotatedScenes)
    try:
        yield NAME
    finally:
        registry.DATASETS._entries.pop(NAME)


def plugin_grid(tmp_path: Path, extra: str = "", maskers: str = '"full", "random_pixels"', recipe: str = ""):
    text = synthetic_grid(maskers=maskers, fractions="0.5", epochs=1, recipe=recipe).replace(
        'name = "synthetic"', f'name = "{NAME}"{extra}')
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return parse_grid(text, path)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_split_with_no_annotated_pixel_is_refused_before_training(plugin_dataset, tmp_path, split):
    grid = plugin_grid(tmp_path, f'\nblank = "{split}"')
    with pytest.raises(registry.UserError) as caught:
        check_grid(grid)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'grid.toml'} line ")
    assert f"dataset {NAME!r} has no annotated pixel in its {split} split" in message


def predictions(weights: Path, images: np.ndarray, normalize: Normalizer) -> np.ndarray:
    model = registry.create_arch("unet", num_classes=5, in_chans=3, base_channels=4, depth=3)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=False)["model"])
    model.eval()
    with torch.no_grad():
        return model(normalize(torch.from_numpy(images), torch.zeros(len(images)))[0]).argmax(1).numpy()


def float64_scores(pred: np.ndarray, truth: np.ndarray, classes: int) -> dict:
    """Confusion matrix, per-class IoU, mIoU and accuracy in float64 NumPy, over the annotated pixels only."""
    annotated = truth >= 0
    cm = np.bincount(truth[annotated].astype(np.int64) * classes + pred[annotated],
                     minlength=classes * classes).reshape(classes, classes)
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = [tp[c] / union[c] if union[c] else float("nan") for c in range(classes)]
    present = [v for v in iou if v == v]
    return {"cm": cm.tolist(), "iou": iou, "miou": sum(present) / len(present), "accuracy": tp.sum() / cm.sum()}


@pytest.mark.parametrize("data_path", ["loader", "device"])
def test_a_grid_on_a_dataset_with_not_annotated_pixels(plugin_dataset, tmp_path, data_path):
    """End to end on the CPU: the run finishes; its validation and test figures are those of a float64
    recomputation that skips -1; "labelled %" is the share of the annotated training pixels the cell labels."""
    grid = plugin_grid(tmp_path, recipe=f'data_path = "{data_path}"\nnum_workers = 0')
    summary = run_grid(grid, OutputFolder(tmp_path / "runs"), CPU)
    assert sorted(summary.done) == sorted(cell.cell_id for cell in grid.cells)
    dataset = GridData(grid).dataset
    train_full = dataset.split("train")[1]
    annotated = int((train_full >= 0).sum())
    assert 0 < annotated < train_full.size
    store = ResultStore(tmp_path / "runs" / "results.sqlite")
    normalize = Normalizer(dataset.mean, dataset.std, CPU)
    try:
        for cell in grid.cells:
            metrics = store.get(cell.cell_id).metrics
            masker = registry.create_masker(cell.masker.name, **cell.masker.kwargs)
            partial = partial_masks(train_full, masker, cell.fraction, cell.seed)
            assert metrics["labelled_fraction"] == int((partial >= 0).sum()) / annotated
            expected_share = 1.0 if cell.masker.name == "full" else 0.5
            assert metrics["labelled_fraction"] == pytest.approx(expected_share, abs=0.01)
            weights = tmp_path / "runs" / "checkpoints" / cell.cell_id / "best.pt"
            for prefix, split in (("final_", "val"), ("test_", "test")):  # one epoch: best.pt is the final epoch
                images, truth = dataset.split(split)
                expected = float64_scores(predictions(weights, images, normalize), truth, dataset.num_classes)
                cm_key = "confusion_matrix" if prefix == "final_" else "test_confusion_matrix"
                assert metrics[cm_key] == expected["cm"]
                assert sum(map(sum, metrics[cm_key])) == int((truth >= 0).sum())
                assert metrics[f"{prefix}miou"] == pytest.approx(expected["miou"], rel=1e-12)
                assert metrics[f"{prefix}accuracy"] == pytest.approx(expected["accuracy"], rel=1e-12)
                assert metrics[f"{prefix}iou"] == pytest.approx(expected["iou"], rel=1e-12, nan_ok=True)
    finally:
        store.close()


def test_the_annotations_picture_draws_not_annotated_pixels_as_unlabelled_ones(plugin_dataset, tmp_path):
    grid = plugin_grid(tmp_path, maskers='"random_pixels", "points_per_image"')
    data = GridData(grid)
    figure = annotations_figure(grid, data, tiles=3)  # no crash on -1 in the full labels
    assert figure.axes
    images, full = data.dataset.split("train")
    colours = np.eye(5, 3)
    grey = overlay(images[0], np.full(full[0].shape, -1, np.int8), colours)
    drawn = overlay(images[0], full[0], colours)
    unknown = full[0] < 0
    assert np.array_equal(drawn[unknown], grey[unknown])  # the image in grey, as an unlabelled pixel
    assert np.array_equal(drawn[~unknown], colours[full[0][~unknown]])
    # -1 is no class when tiles are chosen for showing many classes
    masks = np.zeros((2, 4, 4), np.int8)
    masks[0, 0, 0] = -1
    masks[1, 0, 0] = 1
    assert tiles_to_show(masks, 1) == [1]
