"""The ``synthetic`` dataset: its contract, determinism, and whether it is a fair stand-in for LandCover.ai (class
shares, colours that overlap between classes, thin connected roads, small buildings). Every figure is measured on
generated tiles; none is hard-coded from a previous run."""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch

import registry
from bench.cell_job import GridData
from bench.grid import parse_grid
from bench.train import train_cell
from registry.datasets import synthetic
from registry.datasets.synthetic import CLASS_NAMES, generate_tile
from registry.errors import UserError

BUILDING, WOODLAND, WATER, ROAD = (CLASS_NAMES.index(name) for name in ("building", "woodland", "water", "road"))
NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


@pytest.fixture(scope="module")
def scenes():
    """200 training and 80 validation tiles of 128 pixels: the sample every statistical test measures."""
    dataset = registry.create_dataset("synthetic", tile_size=128, train_size=200, val_size=80, test_size=40, seed=0)
    for name in dataset.splits:
        dataset.split(name)
    return dataset


def shares(masks: np.ndarray) -> np.ndarray:
    """Per-tile class shares, ``[N, 5]``."""
    counts = np.stack([np.bincount(mask.ravel(), minlength=len(CLASS_NAMES)) for mask in masks])
    return counts / masks[0].size


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a sparse mask, each as an ``[n, 2]`` array of pixel coordinates (a flood fill
    over the set pixels only, so no image library is needed)."""
    left = set(map(tuple, np.argwhere(mask).tolist()))
    found = []
    while left:
        stack, component = [left.pop()], []
        while stack:
            y, x = stack.pop()
            component.append((y, x))
            for dy, dx in NEIGHBOURS:
                if (y + dy, x + dx) in left:
                    left.remove((y + dy, x + dx))
                    stack.append((y + dy, x + dx))
        found.append(np.array(component))
    return found


# -- contract ----------------------------------------------------------------------------------------------------


def test_contract_attributes_and_arrays():
    dataset = registry.create_dataset("synthetic", tile_size=48, train_size=3, val_size=2, test_size=1, seed=1)
    assert dataset.num_classes == len(dataset.class_names) == 5
    assert tuple(dataset.class_names) == ("background", "building", "woodland", "water", "road")
    assert dataset.in_chans == 3 and len(dataset.mean) == len(dataset.std) == 3
    assert all(0 < m < 1 for m in dataset.mean) and all(0 < s < 1 for s in dataset.std)
    assert tuple(dataset.splits) == ("train", "val", "test")
    for name, count in (("train", 3), ("val", 2), ("test", 1)):
        images, masks = dataset.split(name)
        assert images.dtype == np.uint8 and images.shape == (count, 48, 48, 3)
        assert masks.dtype == np.uint8 and masks.shape == (count, 48, 48)
        assert masks.max() < dataset.num_classes  # uint8: no -1, every pixel labelled
    assert dataset.split("train")[0] is dataset.split("train")[0]  # generated once, then kept


def test_unknown_split_is_a_user_error_listing_the_splits():
    dataset = registry.create_dataset("synthetic", tile_size=32, train_size=1, val_size=1, test_size=1)
    with pytest.raises(UserError, match="train, val, test"):
        dataset.split("training")


@pytest.mark.parametrize("kwargs", [
    {"tile_size": 31}, {"tile_size": 0}, {"tile_size": 64.0}, {"train_size": -1}, {"val_size": -5},
    {"test_size": 1.5}, {"seed": -1},
])
def test_invalid_arguments_are_user_errors(kwargs):
    with pytest.raises(UserError):
        registry.create_dataset("synthetic", **kwargs)


def test_empty_split_has_the_right_shape():
    images, masks = registry.create_dataset("synthetic", tile_size=32, test_size=0).split("test")
    assert images.shape == (0, 32, 32, 3) and masks.shape == (0, 32, 32)


@pytest.mark.parametrize("size", [32, 48, 64, 100, 128, 200])
def test_any_tile_size_from_32(size):
    image, mask = generate_tile(0, 0, size)
    assert image.shape == (size, size, 3) and mask.shape == (size, size)


@pytest.mark.parametrize("size", [64, 128])
def test_tiles_show_several_classes(size):
    present = [len(np.unique(generate_tile(5, i, size)[1])) for i in range(60)]
    assert np.mean(present) >= 3


# -- determinism and disjoint splits -------------------------------------------------------------------------------


def test_tile_is_a_function_of_its_arguments():
    image, mask = generate_tile(3, 5, 64)
    again_image, again_mask = generate_tile(3, 5, 64)
    assert np.array_equal(image, again_image) and np.array_equal(mask, again_mask)
    assert not np.array_equal(image, generate_tile(4, 5, 64)[0])
    assert not np.array_equal(image, generate_tile(3, 6, 64)[0])
    assert not np.array_equal(image, generate_tile(3, 5, 64, stream=1)[0])


def test_dataset_is_reproducible_and_seeded():
    def build(seed):
        return registry.create_dataset("synthetic", tile_size=32, train_size=4, val_size=2, test_size=2, seed=seed)

    first, second = build(0).split("train"), build(0).split("train")
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[0], build(1).split("train")[0])


def test_splits_are_streams_of_generate_tile(scenes):
    for stream, name in enumerate(scenes.splits):
        images, masks = scenes.split(name)
        image, mask = generate_tile(0, 7, 128, stream=stream)
        assert np.array_equal(images[7], image) and np.array_equal(masks[7], mask)


def test_a_large_split_is_generated_by_a_pool_with_the_same_tiles(monkeypatch):
    """Above PARALLEL_PIXELS a split is generated by a pool of processes (here: every split, the threshold lowered);
    the tiles are the ones one process generates, in order, across chunk boundaries."""
    monkeypatch.setattr(synthetic, "PARALLEL_PIXELS", 0)
    monkeypatch.setattr(synthetic.os, "sched_getaffinity", lambda pid: {0, 1})
    pool_started = []
    monkeypatch.setattr(synthetic, "ProcessPoolExecutor",
                        lambda *args, **kwargs: pool_started.append(args) or ProcessPoolExecutor(*args, **kwargs))
    count = 2 * synthetic._CHUNK + 3
    images, masks = synthetic.synthetic(tile_size=32, train_size=count, val_size=1, test_size=0).split("train")
    assert pool_started == [(2,)]
    alone_images, alone_masks = synthetic.generate_tiles(0, 0, count, 32, workers=1)
    assert np.array_equal(images, alone_images) and np.array_equal(masks, alone_masks)
    for index in (0, synthetic._CHUNK, count - 1):
        image, mask = generate_tile(0, index, 32)
        assert np.array_equal(images[index], image) and np.array_equal(masks[index], mask)


def test_no_tile_repeats_across_splits(scenes):
    seen = {}
    for name in scenes.splits:
        digests = {hashlib.sha256(image.tobytes()).hexdigest() for image in scenes.split(name)[0]}
        assert len(digests) == len(scenes.split(name)[0]), f"a tile repeats within {name}"
        for other, other_digests in seen.items():
            assert not digests & other_digests, f"{name} and {other} share tiles"
        seen[name] = digests


# -- a fair stand-in for LandCover.ai ------------------------------------------------------------------------------


def test_class_shares_near_landcover_ai(scenes):
    per_tile = shares(scenes.split("train")[1])
    mean = dict(zip(CLASS_NAMES, per_tile.mean(0).tolist()))
    print("class shares:", {name: round(share, 4) for name, share in mean.items()})
    assert max(mean, key=mean.get) == "background" and 0.45 <= mean["background"] <= 0.70
    assert 0.20 <= mean["woodland"] <= 0.45
    assert 0.02 <= mean["water"] <= 0.12
    assert 0.005 <= mean["road"] <= 0.05
    assert 0.003 <= mean["building"] <= 0.03


def test_class_shares_vary_from_tile_to_tile(scenes):
    per_tile = shares(scenes.split("train")[1])
    assert per_tile[:, WOODLAND].std() > 0.1
    assert (per_tile[:, WOODLAND] > 0.7).any(), "no mostly-forest tile"
    for cls in (WATER, ROAD, BUILDING):
        absent = (per_tile[:, cls] == 0).mean()
        assert 0.1 < absent < 0.9, f"{CLASS_NAMES[cls]} is absent from {absent:.0%} of tiles"


def test_mean_and_std_match_the_generator(scenes):
    pixels = scenes.split("train")[0].reshape(-1, 3) / 255.0
    assert np.allclose(pixels.mean(0), scenes.mean, atol=0.02)
    assert np.allclose(pixels.std(0), scenes.std, atol=0.02)


def colour_only_miou(train_images, train_masks, val_images, val_masks) -> tuple[float, np.ndarray]:
    """A per-pixel colour classifier: the most frequent class per quantised colour (16 levels a channel), fitted on
    the training tiles; its dataset-level mIoU and per-class IoU on the validation tiles."""

    def bins(images):
        q = images.astype(np.int64) // 16
        return ((q[..., 0] * 16 + q[..., 1]) * 16 + q[..., 2]).ravel()

    classes = len(CLASS_NAMES)
    counts = np.bincount(bins(train_images) * classes + train_masks.ravel(), minlength=16**3 * classes)
    lookup = counts.reshape(-1, classes).argmax(1)
    predicted = lookup[bins(val_images)]
    confusion = np.bincount(val_masks.ravel().astype(np.int64) * classes + predicted, minlength=classes**2)
    confusion = confusion.reshape(classes, classes)
    tp = np.diag(confusion)
    iou = tp / (confusion.sum(0) + confusion.sum(1) - tp)
    return float(iou.mean()), iou


def test_colour_alone_is_a_poor_classifier(scenes, record_property):
    """Colour alone scores far from perfect: the classes must be told apart by texture and shape."""
    miou, iou = colour_only_miou(*scenes.split("train"), *scenes.split("val"))
    record_property("colour_only_miou", miou)
    print("colour-only IoU:", dict(zip(CLASS_NAMES, iou.round(3).tolist())), "mIoU:", round(miou, 3))
    assert miou < 0.45


def test_unet_scores_far_above_colour_alone(tmp_path, record_property):
    """The same data, two predictors: a small UNet trained by the harness for a few epochs on full labels beats the
    colour lookup by a wide margin, so spatial context is what the benchmark measures."""
    grid = parse_grid(
        '[dataset]\nname = "synthetic"\ntile_size = 64\ntrain_size = 256\nval_size = 64\n'
        '[axes]\narchs = [{ name = "unet", base_channels = 16, depth = 4 }]\nlosses = ["partial_ce"]\n'
        'maskers = ["full"]\n[recipe]\nepochs = 12\nbatch_size = 16\nlr = 0.003\n',
        tmp_path / "learnability.toml",
    )
    data = GridData(grid)
    cell = grid.cells[0]
    _, metrics = train_cell(cell, data.for_cell(cell), torch.device("cpu"), tmp_path / "checkpoints")
    colour_miou, _ = colour_only_miou(*data.dataset.split("train"), *data.dataset.split("val"))
    record_property("unet_miou", metrics["best_miou"])
    record_property("colour_only_miou", colour_miou)
    print(f"UNet mIoU {metrics['best_miou']:.3f}, colour-only mIoU {colour_miou:.3f}")
    assert metrics["best_miou"] > colour_miou + 0.1


def test_roads_are_thin_connected_curves(scenes):
    masks = scenes.split("train")[1]
    size = masks.shape[1]
    with_roads = [mask == ROAD for mask in masks if (mask == ROAD).any()]
    assert len(with_roads) > 0.5 * len(masks)
    for road in with_roads:
        padded = np.pad(road, 1)
        neighbours = sum(padded[1 + dy:1 + dy + size, 1 + dx:1 + dx + size] for dy, dx in NEIGHBOURS)
        assert (neighbours[road] > 0).mean() > 0.95, "isolated road pixels"
        # Thin: hardly any road pixel has a whole 5x5 square of road around it.
        padded = np.pad(road, 2)
        core = np.logical_and.reduce([padded[dy:dy + size, dx:dx + size] for dy in range(5) for dx in range(5)])
        assert core.sum() <= 0.05 * road.sum()
        largest = max(components(road), key=len)
        assert np.ptp(largest, axis=0).max() >= 0.5 * size, "the longest road does not cross half the tile"


def test_buildings_are_small_and_mostly_beside_roads(scenes):
    masks = scenes.split("train")[1]
    size = masks.shape[1]
    sizes, distances = [], []
    for mask in masks:
        houses = components(mask == BUILDING)
        sizes += [len(house) for house in houses]
        road = np.argwhere(mask == ROAD)
        if len(road):
            distances += [np.hypot(*(road - house.mean(0)).T).min() for house in houses]
    assert len(sizes) > len(masks), "fewer than one building a tile"
    assert max(sizes) <= 0.01 * size * size
    assert np.mean(np.array(distances) < 0.2 * size) > 0.8
