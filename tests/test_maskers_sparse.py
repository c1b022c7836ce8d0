"""The sparse-annotation maskers (points, scribbles, blocks, eroded boundaries): what defines each, checked against
independent computations, their determinism, and bad parameters refused before training. The registry-wide contract
is checked for them in test_maskers.py."""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

import registry
from bench.checks import check_grid
from bench.data import tile_generator
from bench.grid import parse_grid
from registry.datasets.synthetic import generate_tile
from registry.errors import UserError
from registry.maskers._common import depth
from registry.maskers.strokes import stamp


def scene(index: int, size: int = 32) -> torch.Tensor:
    """A synthetic aerial scene's mask: large irregular regions, thin roads, small buildings."""
    return torch.from_numpy(generate_tile(0, index, size)[1].astype(np.int64))


def noise(shape=(24, 32), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 5, shape, generator=torch.Generator().manual_seed(seed))


def labelled(partial: torch.Tensor) -> np.ndarray:
    return (partial >= 0).numpy()


def depth_reference(labels: np.ndarray) -> np.ndarray:
    """Brute force: each pixel's Euclidean distance to the nearest pixel of another class (inf if none)."""
    rows, columns = (a.ravel() for a in np.indices(labels.shape))
    squared = (rows[:, None] - rows[None, :]) ** 2 + (columns[:, None] - columns[None, :]) ** 2
    flat = labels.ravel()
    squared = np.where(flat[:, None] == flat[None, :], np.inf, squared)
    return np.sqrt(squared.min(1)).reshape(labels.shape)


def regions_reference(labels: np.ndarray) -> np.ndarray:
    """Breadth-first flood fill: an id per 8-connected region of one class."""
    ids = np.full(labels.shape, -1)
    height, width = labels.shape
    next_id = 0
    for start in zip(*np.nonzero(ids < 0)):
        if ids[start] >= 0:
            continue
        ids[start] = next_id
        queue = deque([start])
        while queue:
            y, x = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    n = (y + dy, x + dx)
                    if 0 <= n[0] < height and 0 <= n[1] < width and ids[n] < 0 and labels[n] == labels[y, x]:
                        ids[n] = next_id
                        queue.append(n)
        next_id += 1
    return ids


# -- determinism --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs", [
    ("points_per_image", {"count": 10}),
    ("points_per_class", {"k": 2}),
    ("scribbles", {}),
    ("blocks", {"size": 4}),
])
def test_same_seed_same_mask_other_seed_other_mask(name, kwargs):
    masker = registry.create_masker(name, **kwargs)
    full = scene(1)
    first = masker(full, 0.1, tile_generator(3, 5))
    assert torch.equal(first, masker(full, 0.1, tile_generator(3, 5)))
    assert not torch.equal(first, masker(full, 0.1, tile_generator(4, 5)))
    assert not torch.equal(first, masker(full, 0.1, tile_generator(3, 6)))


@pytest.mark.parametrize("name", ["points_per_image", "points_per_class", "scribbles", "eroded"])
def test_maskers_that_ignore_the_fraction(name):
    masker = registry.create_masker(name)
    assert masker.uses_fraction is False
    full = scene(2)
    assert torch.equal(masker(full, 0.01, tile_generator(0, 0)), masker(full, 1.0, tile_generator(0, 0)))


def test_blocks_use_the_fraction():
    assert registry.create_masker("blocks").uses_fraction is True


# -- points_per_image ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 10, 100, 32 * 32])
def test_points_per_image_labels_exactly_count_pixels(count):
    masker = registry.create_masker("points_per_image", count=count)
    for index in range(3):
        assert labelled(masker(scene(index), 0.1, tile_generator(0, index))).sum() == count


def test_points_per_image_are_spread_over_the_tile():
    masker = registry.create_masker("points_per_image", count=8)
    hits = sum(labelled(masker(torch.zeros(8, 8, dtype=torch.int64), 1.0, tile_generator(0, i))) for i in range(400))
    assert hits.sum() == 400 * 8 and hits.min() > 20 and hits.max() < 80  # 50 per pixel on average


# -- points_per_class ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k, min_distance", [(1, 3), (3, 2), (5, 0)])
def test_points_per_class_k_per_present_class_deep_inside(k, min_distance):
    masker = registry.create_masker("points_per_class", k=k, min_distance=min_distance)
    for index in range(4):
        full = scene(index)
        labels = full.numpy()
        kept = labelled(masker(full, 1.0, tile_generator(0, index)))
        deep = depth_reference(labels)
        for value in range(5):
            members = labels == value
            chosen = kept & members
            assert chosen.sum() == min(k, members.sum())
            if (deep[members] >= min_distance).sum() >= k:
                assert (deep[chosen] >= min_distance).all()
            elif members.sum() > k:  # all the deep pixels, then the deepest others
                assert (deep[chosen].min() >= deep[members & ~chosen]).all()


def test_points_per_class_in_a_thin_region_sit_on_its_middle_line():
    labels = torch.zeros(20, 20, dtype=torch.int64)
    labels[8:11, 2:18] = 1  # a band 3 pixels wide: its middle row is the deepest
    labels[0, 0] = 2  # a class of one pixel
    kept = labelled(registry.create_masker("points_per_class", k=4, min_distance=5)(labels, 1.0, tile_generator(0, 0)))
    assert kept[labels.numpy() == 1].sum() == 4 and kept[9, 3:17].sum() == 4
    assert kept[0, 0] and kept.sum() == 4 + 4 + 1


# -- scribbles ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count, width", [(1, 1), (1, 3), (2, 2)])
def test_scribbles_are_connected_thin_strokes_inside_single_regions(count, width):
    masker = registry.create_masker("scribbles", count=count, width=width, min_area=16)
    for index in range(4):
        full = scene(index, 48)
        labels = full.numpy()
        regions = regions_reference(labels)
        strokes = masker.strokes(full, tile_generator(0, index))
        union = np.zeros(labels.shape, dtype=bool)
        for stroke in strokes:
            steps = np.abs(np.diff(stroke.path, axis=0))
            assert (steps.max(1, initial=1) == 1).all()  # consecutive centre pixels are 8-adjacent...
            assert len({tuple(p) for p in stroke.path.tolist()}) == len(stroke.path)  # ... and distinct
            pixels = stroke.pixels(*labels.shape)
            assert len(np.unique(regions[pixels])) == 1  # one region, hence one class: never across a boundary
            assert (labels[pixels] == stroke.value).all()
            assert 1 <= stroke.brush <= width
            union |= pixels
        # count strokes in every region of at least min_area pixels, and none elsewhere
        sizes = np.bincount(regions.ravel())
        per_region = np.bincount([regions[tuple(s.path[0])] for s in strokes], minlength=len(sizes))
        assert np.array_equal(per_region, np.where(sizes >= 16, count, 0))
        # regions in the order of their class, then of their first pixel (the reference numbers them in raster order)
        order = [(s.value, regions[tuple(s.path[0])]) for s in strokes]
        assert order == sorted(order)
        assert np.array_equal(labelled(masker(full, 1.0, tile_generator(0, index))), union)


def test_scribbles_use_the_full_brush_where_it_fits_and_follow_thin_regions():
    labels = torch.zeros(32, 32, dtype=torch.int64)
    labels[4:24, 4:24] = 1  # a wide square
    labels[28, 2:30] = 2  # a road one pixel wide
    strokes = registry.create_masker("scribbles", width=3).strokes(labels, tile_generator(0, 0))
    by_class = {s.value: s for s in strokes}
    assert sorted(by_class) == [0, 1, 2] and len(strokes) == 3
    assert by_class[0].brush == by_class[1].brush == 3
    assert by_class[1].pixels(32, 32).sum() >= 3 * 10  # a stroke across the square, not a dot
    road = by_class[2]
    assert road.brush == 1 and (road.path[:, 0] == 28).all() and len(road.path) >= 7


def test_scribbles_label_the_largest_region_when_none_is_large_enough():
    full = noise()
    masker = registry.create_masker("scribbles", count=2, min_area=24 * 32)
    strokes = masker.strokes(full, tile_generator(0, 0))
    regions = regions_reference(full.numpy())
    largest = np.argmax(np.bincount(regions.ravel()))
    assert len(strokes) == 2 and all(regions[tuple(s.path[0])] == largest for s in strokes)


# -- blocks -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.001, 0.05, 0.1, 0.3, 0.7, 0.95, 1.0])
@pytest.mark.parametrize("size", [4, 8])
def test_blocks_cover_the_fraction_with_whole_squares(fraction, size):
    height, width = 40, 48
    masker = registry.create_masker("blocks", size=size)
    for index in range(3):
        kept = labelled(masker(noise((height, width), index), fraction, tile_generator(0, index)))
        target = fraction * height * width
        assert abs(kept.sum() - target) <= size * size / 2 or kept.sum() == size * size
        # every labelled pixel lies in a whole size x size window of labelled pixels inside the tile
        windows = np.lib.stride_tricks.sliding_window_view(kept, (size, size)).all(axis=(2, 3))
        covered = np.zeros_like(kept)
        stamp(covered, np.argwhere(windows) + (size - 1) // 2, size)
        assert np.array_equal(covered, kept)
    if fraction == 1.0:
        assert kept.all()


def test_blocks_refuse_a_fraction_outside_the_unit_interval():
    with pytest.raises(ValueError, match="fraction"):
        registry.create_masker("blocks")(noise(), 1.5, tile_generator(0, 0))


# -- eroded -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 2, 3])
def test_eroded_removes_exactly_the_pixels_within_width_of_a_boundary(width):
    masker = registry.create_masker("eroded", width=width)
    # class values beyond uint8 (1000, 4000) take the ranked path
    for full in (scene(0), scene(3), noise(seed=1), noise((24, 32), 2) // 3 * 7, noise(seed=4) * 1000):
        kept = labelled(masker(full, 1.0, tile_generator(0, 0)))
        assert np.array_equal(kept, depth_reference(full.numpy()) > width)


def test_eroded_ignores_the_generator_and_the_tile_edge():
    masker = registry.create_masker("eroded", width=2)
    full = scene(1)
    assert torch.equal(masker(full, 1.0, tile_generator(0, 0)), masker(full, 1.0, tile_generator(9, 9)))
    one_class = torch.full((16, 16), 3, dtype=torch.int64)
    assert torch.equal(masker(one_class, 1.0, tile_generator(0, 0)), one_class)


# -- bad parameters -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs, shown", [
    ("points_per_image", {"count": 0}, "count must be a positive integer, not 0"),
    ("points_per_image", {"count": -3}, "not -3"),
    ("points_per_image", {"count": 2.5}, "not 2.5"),
    ("points_per_image", {"count": True}, "not True"),
    ("points_per_class", {"k": 0}, "k must be a positive integer, not 0"),
    ("points_per_class", {"min_distance": -1}, "min_distance must be a non-negative number, not -1"),
    ("scribbles", {"width": 0}, "width must be a positive integer, not 0"),
    ("scribbles", {"count": "3"}, "count must be a positive integer, not '3'"),
    ("scribbles", {"min_area": -1}, "min_area must be a positive integer, not -1"),
    ("blocks", {"size": -4}, "size must be a positive integer, not -4"),
    ("eroded", {"width": -1}, "width must be a positive integer, not -1"),
])
def test_bad_parameters_are_refused_when_built(name, kwargs, shown):
    with pytest.raises(UserError, match=f"^masker '{name}': ") as info:
        registry.create_masker(name, **kwargs)
    assert shown in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name, fits, too_big, shown", [
    ("points_per_image", {"count": 32 * 32}, {"count": 32 * 32 + 1}, "count 1025 is more than the 1024 pixels"),
    ("points_per_class", {"k": 32 * 32}, {"k": 5000}, "k 5000 is more than the 1024 pixels"),
    ("blocks", {"size": 32}, {"size": 33}, "size 33 is larger than a 32x32 tile"),
    ("scribbles", {"width": 32}, {"width": 40}, "width 40 is wider than a 32x32 tile"),
    ("scribbles", {"min_area": 1024}, {"min_area": 2000}, "min_area 2000 is more than the 1024 pixels"),
    ("eroded", {"width": 43}, {"width": 44}, "width 44 reaches across a 32x32 tile"),
])
def test_check_refuses_what_a_tile_size_cannot_honour(name, fits, too_big, shown):
    registry.create_masker(name, **fits).check(32, 32)
    masker = registry.create_masker(name, **too_big)
    with pytest.raises(UserError, match=f"^masker '{name}': ") as info:
        masker.check(32, 32)
    assert shown in str(info.value)
    if name != "eroded":  # the masker refuses such a tile itself too
        with pytest.raises(UserError, match=shown):
            masker(scene(0), 0.5, tile_generator(0, 0))


GRID = """\
[dataset]
name = "synthetic"
tile_size = 32
train_size = 2
val_size = 2
test_size = 0

[axes]
archs = [{ name = "unet", base_channels = 4, depth = 3 }]
losses = ["partial_ce"]
maskers = ["random_pixels", { name = "points_per_image", count = 5000 }]

[recipe]
epochs = 1
batch_size = 2
"""


def test_grid_with_a_bad_masker_parameter_fails_with_its_line():
    with pytest.raises(UserError) as info:
        parse_grid(GRID.replace("count = 5000", "count = 0"), Path("bad.toml"))
    assert str(info.value) == ("bad.toml line 11: masker 'points_per_image': count must be a positive integer, "
                               "not 0")


def test_grid_with_more_points_than_pixels_fails_before_training(tmp_path):
    grid = tmp_path / "too_many_points.toml"
    grid.write_text(GRID)
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--grid", str(grid), "--out", "runs"],
                            check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {grid} line 11: masker 'points_per_image': count 5000 is more than "
                                     "the 1024 pixels of a 32x32 tile")
    assert not (tmp_path / "runs" / "results.sqlite").exists()


def test_the_harness_calls_check_with_the_tile_size():
    text = GRID.replace("count = 5000", "count = 1024")
    grid = parse_grid(text, Path("ok.toml"))
    check_grid(grid)  # 1024 points fit a 32x32 tile
    grid = parse_grid(text.replace('{ name = "points_per_image", count = 1024 }', '{ name = "blocks", size = 40 }'),
                      Path("big.toml"))
    with pytest.raises(UserError, match=r"^big.toml line 11: masker 'blocks': size 40 is larger than a 32x32 tile$"):
        check_grid(grid)


def test_the_harness_calls_check_with_every_fraction():
    """random_pixels at 0.01 % of a 32x32 tile would keep round(0.1) = 0 pixels: refused, naming that fraction, though
    another fraction of the grid is fine."""
    text = GRID.replace("count = 5000", "count = 4").replace("[recipe]", "fractions = [0.5, 0.0001]\n\n[recipe]")
    grid = parse_grid(text, Path("tiny.toml"))
    with pytest.raises(UserError, match=r"^tiny.toml line 11: masker 'random_pixels': 0.01 % of a 32x32 tile is 0.102 "
                                        r"pixels, which rounds to none"):
        check_grid(grid)
    grid = parse_grid(text.replace("0.0001", "0.001"), Path("fine.toml"))
    check_grid(grid)  # 0.1 % is 1.02 pixels: one kept



def test_depths_are_exact_square_roots_of_whole_numbers():
    """cv2's float32 distances can differ in their last bit from one process to the next (with the buffers'
    alignment), which changed the deepest pixels, hence the clicks and strokes, between runs of the same seed; the
    maskers use exact distances instead, equal to a brute-force reference to the bit."""
    for index in range(3):
        labels = scene(index).numpy()
        for value in np.unique(labels):
            inside = labels == value
            assert np.array_equal(depth(inside), np.where(inside, depth_reference(inside.astype(np.int64)), 0))
