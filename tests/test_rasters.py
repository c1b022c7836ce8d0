"""The dataset ``rasters``: tiles equal an independent cut of the rasters, splits by scene, edges, class tables,
nodata, bands, statistics, the resumable cache, every bad input in one line, and a grid run end to end.

The fixtures (raster_layout.py) write GeoTIFF scenes with a CRS and a transform, in uint8, uint16 and float32, with
three and four bands, LZW, Deflate and uncompressed, stripped and tiled, of sides that are not multiples of the tiles.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import rasterio
from grids import dataset_grid
from raster_layout import SceneSpec, pixel_grid, without_data, write_layout, write_scene
from user_faults import refused_leaving_no_complete_cache

import registry
from bench.cli import main
from registry.datasets.rasters import prepare
from registry.datasets.tile_cache import MANIFEST, PROGRESS
from registry.errors import UserError

CLASSES = ["background", "building", "woodland", "water", "road"]
SIZES = [(300, 260), (337, 310), (374, 360), (200, 410)]


def specs(dtype: str = "uint8", bands: int = 3, nodata: int | None = None, **kwargs) -> list[SceneSpec]:
    return [SceneSpec(f"s{i}", h, w, bands, dtype, seed=i, nodata=nodata, **kwargs) for i, (h, w) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def rgb8(tmp_path_factory):
    root = tmp_path_factory.mktemp("rasters-rgb8")
    return root, write_layout(root, specs())


@pytest.fixture(scope="module")
def nir16(tmp_path_factory):
    """Four-band uint16 scenes whose label rasters have a nodata value (255) over a block of pixels."""
    root = tmp_path_factory.mktemp("rasters-nir16")
    return root, write_layout(root, specs("uint16", 4, nodata=255))


@pytest.fixture(scope="module")
def holes(tmp_path_factory):
    """Four-band uint16 scenes whose images hold no data over their bottom right sixth: two by a nodata value (0) on
    every band, two by an internal mask; their label rasters have a nodata block too."""
    root = tmp_path_factory.mktemp("rasters-holes")
    return root, write_layout(root, [SceneSpec(f"s{i}", h, w, 4, "uint16", seed=i, nodata=255,
                                               **({"image_nodata": 0} if i % 2 else {"image_mask": True}))
                                     for i, (h, w) in enumerate(SIZES)])


@pytest.fixture(scope="module")
def float32(tmp_path_factory):
    root = tmp_path_factory.mktemp("rasters-float32")
    return root, write_layout(root, specs("float32", 3))


@pytest.fixture(scope="module")
def valued(tmp_path_factory):
    """Label rasters holding 10, 20, ... 50 for the classes (a class table is needed to read them)."""
    root = tmp_path_factory.mktemp("rasters-valued")
    values = {c: 10 * (c + 1) for c in range(5)}
    return root, write_layout(root, specs(label_values=values))


def cut(root: Path, tmp_path: Path, **kwargs):
    kwargs.setdefault("classes", CLASSES)
    kwargs.setdefault("tile_size", 128)
    return prepare(root, cache_dir=tmp_path / "cache", **kwargs)


# -- an independent cut: rasterio reads the whole rasters, NumPy pads and slices them --------------------------------


def independent_starts(length: int, tile: int, stride: int, edge: str) -> list[int]:
    if edge == "drop":
        return [y for y in range(0, length, stride) if y + tile <= length]
    return [y for y in range(0, length, stride) if y == 0 or y - stride + tile < length]  # until one reaches the end


def independent_cut(scene, tile: int, stride: int, edge: str, table: dict[int, int], bands=None):
    """[(id, image [T, T, C], mask [T, T])] of a scene."""
    with rasterio.open(scene.image_path) as src:
        image = src.read(bands)
    hole = without_data(scene.image_path)
    with rasterio.open(scene.label_path) as lbl:
        label, nodata = lbl.read(1), lbl.nodata
    classes = np.array([table.get(v, -2) for v in range(256)], np.int16)[label]
    if nodata is not None:
        classes[label == nodata] = -1
    classes[hole] = -1
    assert (classes != -2).all()
    height, width = label.shape
    padded_image = np.zeros((image.shape[0], height + tile, width + tile), image.dtype)
    padded_image[:, :height, :width] = image
    padded_mask = np.full((height + tile, width + tile), -1, np.int16)
    padded_mask[:height, :width] = classes
    return [(f"{scene.name}_{y}_{x}", padded_image[:, y:y + tile, x:x + tile].transpose(1, 2, 0),
             padded_mask[y:y + tile, x:x + tile])
            for y in independent_starts(height, tile, stride, edge) for x in independent_starts(width, tile, stride,
                                                                                                edge)]


def assert_cache_is_the_independent_cut(cache, scenes, tile, stride, edge, table, bands=None):
    dataset = registry.datasets.rasters.Rasters(cache)
    for split in dataset.splits:
        expected = [t for name in cache.manifest["scenes"][split]
                    for t in independent_cut(scenes[name], tile, stride, edge, table, bands)]
        assert cache.ids[split] == [tile_id for tile_id, _, _ in expected]
        images, masks = dataset.split(split)
        assert isinstance(images, np.memmap) and isinstance(masks, np.memmap)
        for index, (tile_id, image, mask) in enumerate(expected):
            assert images[index].dtype == image.dtype and np.array_equal(images[index], image), tile_id
            assert np.array_equal(masks[index], mask), tile_id


IDENTITY = {v: v for v in range(5)}


@pytest.mark.parametrize("fixture, edge, stride", [
    ("rgb8", "pad", None), ("rgb8", "drop", 96), ("rgb8", "pad", 100), ("nir16", "pad", None),
    ("nir16", "drop", None), ("float32", "pad", 160), ("holes", "pad", None), ("holes", "drop", 100),
])
def test_tiles_equal_an_independent_cut(fixture, edge, stride, request, tmp_path):
    root, scenes = request.getfixturevalue(fixture)
    cache = cut(root, tmp_path, edge=edge, stride=stride)
    assert_cache_is_the_independent_cut(cache, scenes, 128, stride or 128, edge, IDENTITY)


def test_pixels_the_images_hold_no_data_for_are_not_annotated_and_only_those_caches_say_so(holes, rgb8, tmp_path):
    """Whatever the labels hold there (the fixture's are classes), and in a cache of their own: the plan of scenes
    without such pixels, and so their cache, is what it was."""
    root, scenes = holes
    cache = cut(root, tmp_path / "holes")
    dataset = registry.datasets.rasters.Rasters(cache)
    masks = np.concatenate([dataset.split(split)[1] for split in dataset.splits])
    assert cache.manifest["source"]["image_nodata"] == "not annotated"
    assert cache.manifest["unannotated"] == int((masks < 0).sum()) > sum(
        int((scene.label == 255).sum()) for scene in scenes.values())
    plain = cut(rgb8[0], tmp_path / "plain")
    assert "image_nodata" not in plain.manifest["source"]


def test_dtypes_are_kept_and_masks_are_uint8_only_without_unannotated_pixels(rgb8, nir16, float32, tmp_path):
    served = {}
    for name, (root, _), edge in (("rgb8-drop", rgb8, "drop"), ("rgb8-pad", rgb8, "pad"), ("nir16", nir16, "drop"),
                                  ("float32", float32, "drop")):
        dataset = registry.create_dataset("rasters", root=str(root), classes=CLASSES, tile_size=128, edge=edge,
                                          cache_dir=str(tmp_path))
        images, masks = dataset.split("train")
        served[name] = (images.dtype, masks.dtype, dataset.in_chans, int(masks.min()))
    assert served == {"rgb8-drop": (np.uint8, np.uint8, 3, 0), "rgb8-pad": (np.uint8, np.int8, 3, -1),
                      "nir16": (np.uint16, np.int8, 4, -1), "float32": (np.float32, np.uint8, 3, 0)}


def test_int8_masks_without_any_unannotated_pixel_are_served_as_uint8(rgb8, tmp_path):
    # ignore = [7] could have unannotated pixels: the cache holds int8; no pixel is 7, so the dataset serves uint8
    cache = cut(rgb8[0], tmp_path, edge="drop", ignore=[7])
    assert cache.manifest["mask_dtype"] == "int8" and cache.manifest["unannotated"] == 0
    dataset = registry.datasets.rasters.Rasters(cache)
    for split in dataset.splits:
        masks = dataset.split(split)[1]
        assert masks.dtype == np.uint8 and isinstance(masks, np.memmap)


def test_scale_one_half_is_the_area_mean_and_the_centre_pixel(nir16, tmp_path):
    root, scenes = nir16
    cache = cut(root, tmp_path, scale=0.5)
    assert cache.manifest["tile_size"] == 64
    images, masks = cache.split("train")
    expected = [t for name in cache.manifest["scenes"]["train"] for t in independent_cut(scenes[name], 128, 128,
                                                                                         "pad", IDENTITY)]
    for index, (tile_id, image, mask) in enumerate(expected):
        blocks = image.reshape(64, 2, 64, 2, 4).astype(np.float64).mean(axis=(1, 3))
        inside = mask[1::2, 1::2] >= 0
        assert np.abs(images[index].astype(np.float64) - blocks)[inside].max() <= 1, tile_id
        assert np.array_equal(masks[index], mask[1::2, 1::2]), tile_id


def test_scale_three_quarters_and_keeps_brightness(rgb8, tmp_path):
    root, scenes = rgb8
    cache = cut(root, tmp_path, tile_size=192, scale=0.75, edge="drop")
    images, masks = cache.split("train")
    assert images.shape[1:] == (144, 144, 3) and masks.shape[1:] == (144, 144)
    expected = [t for name in cache.manifest["scenes"]["train"] for t in independent_cut(scenes[name], 192, 192,
                                                                                         "drop", IDENTITY)]
    rows = np.floor((np.arange(144) + 0.5) * 192 / 144).astype(int)
    for index, (_, image, mask) in enumerate(expected):
        assert abs(images[index].mean() - image.mean()) < 0.5
        assert np.array_equal(masks[index], mask[np.ix_(rows, rows)])


def test_seeded_split_is_by_scene_with_the_stated_shares(rgb8, tmp_path):
    root, scenes = rgb8
    cache = cut(root, tmp_path, split={"train": 0.5, "val": 0.25, "test": 0.25}, split_seed=3)
    listed = cache.manifest["scenes"]
    assert sorted(len(v) for v in listed.values()) == [1, 1, 2] and len(listed["train"]) == 2
    assert sorted(n for names in listed.values() for n in names) == sorted(scenes)
    for split, names in listed.items():  # every tile of a scene is in its scene's split
        assert {tile_id.rsplit("_", 2)[0] for tile_id in cache.ids[split]} == set(names)
    again = cut(root, tmp_path / "again", split={"test": 0.25, "val": 0.25, "train": 0.5}, split_seed=3)
    assert again.manifest["scenes"] == listed  # the same seed deals the same scenes, whatever the table's order
    seeds = {json.dumps(cut(root, tmp_path / f"seed{s}", split={"train": 0.5, "val": 0.25, "test": 0.25},
                            split_seed=s).manifest["scenes"]) for s in range(6)}
    assert len(seeds) > 1


def test_split_files_list_scenes_in_their_order_and_leave_others_out(rgb8, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(rgb8[0], root)
    (root / "train.txt").write_text("s3\n# a comment\n\ns1.tif\n")
    (root / "val.txt").write_text("s0\n")
    cache = cut(root, tmp_path, split={"train": "train.txt", "val": "val.txt"})
    assert cache.manifest["scenes"] == {"train": ["s3", "s1"], "val": ["s0"]}
    assert cache.ids["train"][0].startswith("s3_") and cache.ids["train"][-1].startswith("s1_")
    assert registry.datasets.rasters.Rasters(cache).splits == ("train", "val")


def test_a_class_table_maps_raster_values_and_ignore_leaves_pixels_unannotated(valued, tmp_path):
    root, scenes = valued
    values = {"background": 10, "building": [20, 30], "water": 40}
    cache = cut(root, tmp_path, classes=["background", "building", "water"], values=values, ignore=[50])
    table = {10: 0, 20: 1, 30: 1, 40: 2, 50: -1}
    assert_cache_is_the_independent_cut(cache, scenes, 128, 128, "pad", table)
    dataset = registry.datasets.rasters.Rasters(cache)
    assert dataset.class_names == ("background", "building", "water") and dataset.num_classes == 3
    masks = dataset.split("train")[1]
    assert masks.dtype == np.int8 and set(np.unique(masks)) <= {-1, 0, 1, 2}


def test_nodata_becomes_unannotated(nir16, tmp_path):
    root, scenes = nir16
    cache = cut(root, tmp_path, edge="drop")
    with rasterio.open(scenes["s0"].label_path) as lbl:
        assert lbl.nodata == 255
    masks = np.concatenate([cache.split(s)[1] for s in cache.ids])
    assert (masks == -1).any() and cache.manifest["unannotated"] == int((masks == -1).sum())


def test_bands_pick_and_order_and_rgb_bands(nir16, tmp_path):
    root, scenes = nir16
    cache = cut(root, tmp_path, bands=[4, 3, 2, 1])
    assert_cache_is_the_independent_cut(cache, scenes, 128, 128, "pad", IDENTITY, bands=[4, 3, 2, 1])
    assert registry.datasets.rasters.Rasters(cache).rgb_bands == (3, 2, 1)  # from the rasters' colour bands
    picked = registry.create_dataset("rasters", root=str(root), classes=CLASSES, tile_size=128, bands=[4, 1],
                                     rgb_bands=[4, 1, 4], cache_dir=str(tmp_path))
    assert picked.in_chans == 2 and picked.rgb_bands == (0, 1, 0) and len(picked.mean) == 2
    assert_cache_is_the_independent_cut(picked.cache, scenes, 128, 128, "pad", IDENTITY, bands=[4, 1])
    plain = registry.create_dataset("rasters", root=str(root), classes=CLASSES, tile_size=128, bands=[4, 1],
                                    cache_dir=str(tmp_path))
    assert plain.rgb_bands is None  # no red, green and blue among them: the harness's default


def test_the_dataset_says_its_scale_and_bands_for_predicting_scenes(nir16, tmp_path):
    """`bench predict` reads a scene's bands in the order the tiles hold them, resampled as the tiles were."""
    root, _ = nir16
    every = registry.create_dataset("rasters", root=str(root), classes=CLASSES, tile_size=128, cache_dir=str(tmp_path))
    assert (every.scale, every.bands) == (1.0, [1, 2, 3, 4])
    picked = registry.create_dataset("rasters", root=str(root), classes=CLASSES, tile_size=128, scale=0.75,
                                     bands=[4, 1], cache_dir=str(tmp_path))
    assert (picked.scale, picked.bands) == (0.75, [4, 1])
    assert picked.split("train")[0].shape[1:] == (96, 96, 2)


@pytest.mark.parametrize("fixture, scale", [("rgb8", 255), ("nir16", 65535), ("float32", 1)])
def test_mean_and_std_over_the_training_pixels_inside_the_rasters(fixture, scale, request, tmp_path):
    root, scenes = request.getfixturevalue(fixture)
    dataset = registry.create_dataset("rasters", root=str(root), classes=CLASSES, tile_size=128,
                                      cache_dir=str(tmp_path))
    inside = []
    for name in dataset.cache.manifest["scenes"]["train"]:
        for _, image, mask in independent_cut(scenes[name], 128, 128, "pad", IDENTITY):
            outside = np.zeros(mask.shape, bool)
            outside[(image == 0).all(-1) & (mask == -1)] = True  # padding: zero image, no label
            inside.append(image[~outside].astype(np.float64))
    pixels = np.concatenate(inside)
    assert np.allclose(dataset.mean, pixels.mean(0) / scale, rtol=1e-5, atol=1e-6)
    assert np.allclose(dataset.std, pixels.std(0) / scale, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_mean_and_std_leave_out_the_pixels_the_images_hold_no_data_for(scale, holes, tmp_path):
    """Against float64 over every pixel of the training scenes that holds data: the tiles of 128 pixels cover each
    pixel once (edges padded); at scale 0.5 the same tiles at 64 pixels, each a mean of four source pixels (the
    block of 2 x 2 under it) that counts where the pixel under its centre holds data."""
    root, scenes = holes
    dataset = registry.create_dataset("rasters", root=str(root), classes=CLASSES, tile_size=128, scale=scale,
                                      cache_dir=str(tmp_path))
    kept = []
    for name in dataset.cache.manifest["scenes"]["train"]:
        with rasterio.open(scenes[name].image_path) as src:
            image = src.read().astype(np.float64)  # [bands, H, W]
        hole = without_data(scenes[name].image_path)
        if scale == 0.5:  # the scenes' sides are even or padded: the 2 x 2 blocks of the tiles, centre top-left-ish
            height, width = (side // 2 * 2 for side in hole.shape)
            blocks = image[:, :height, :width].reshape(len(image), height // 2, 2, width // 2, 2).mean((2, 4))
            image, hole = blocks, hole[1:height:2, 1:width:2]
        kept.append(image[:, ~hole].T)
    pixels = np.concatenate(kept)
    assert np.allclose(dataset.mean, pixels.mean(0) / 65535, rtol=1e-4, atol=1e-6)
    assert np.allclose(dataset.std, pixels.std(0) / 65535, rtol=1e-4, atol=1e-6)


def test_an_interrupted_prepare_resumes_at_the_first_unfinished_scene(nir16, tmp_path):
    root, _ = nir16
    first = cut(root, tmp_path / "straight")
    first_scene = first.manifest["scenes"]["train"][0]
    first_tiles = sum(t.startswith(first_scene + "_") for t in first.ids["train"])

    def interrupt(done, total):
        if done == first_tiles + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cut(root, tmp_path / "resumed", progress=interrupt)
    [folder] = [p for p in (tmp_path / "resumed" / "cache").iterdir()]
    assert not (folder / MANIFEST).exists()
    assert list(json.loads((folder / PROGRESS).read_text())["units"]) == [first_scene]
    totals = []
    resumed = cut(root, tmp_path / "resumed", progress=lambda done, total: totals.append(total))
    assert set(totals) == {sum(map(len, first.ids.values())) - first_tiles}
    for split in first.ids:
        for ours, theirs in zip(resumed.split(split), first.split(split)):
            assert np.array_equal(ours, theirs)
    assert resumed.manifest["mean"] == first.manifest["mean"] and resumed.manifest["std"] == first.manifest["std"]
    assert cut(root, tmp_path / "resumed", progress=lambda *a: pytest.fail("redone")).manifest == resumed.manifest


def test_a_changed_scene_is_prepared_again_alone(rgb8, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(rgb8[0], root)
    cut(root, tmp_path)
    with rasterio.open(root / "labels" / "s2.tif", "r+") as lbl:
        lbl.write(np.full((1, lbl.height, lbl.width), 3, np.uint8))
    totals = []
    cache = cut(root, tmp_path, progress=lambda done, total: totals.append(total))
    assert set(totals) == {len(independent_starts(374, 128, 128, "pad")) * len(independent_starts(360, 128, 128,
                                                                                                   "pad"))}
    split = next(s for s, names in cache.manifest["scenes"].items() if "s2" in names)
    masks = cache.split(split)[1]
    for index, tile_id in enumerate(cache.ids[split]):
        if tile_id.startswith("s2_"):
            assert set(np.unique(masks[index])) <= {3, -1}


# -- bad input: one line naming the file and the problem, and no cache claiming to be complete -----------------------


def rewrite(path: Path, data=None, **changes) -> None:
    """The raster at ``path`` written again with ``changes`` to its profile (and ``data``, [bands, H, W])."""
    with rasterio.open(path) as src:
        profile, pixels = src.profile, src.read()
    profile.update(changes)
    pixels = pixels if data is None else data(pixels)
    profile.update(count=pixels.shape[0], height=pixels.shape[1], width=pixels.shape[2], dtype=pixels.dtype.name)
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def bad_values(path: Path) -> None:
    def put(pixels):
        pixels = pixels.copy()
        pixels[0, 10, 20:25] = 7
        pixels[0, 11, 0] = 9
        return pixels
    rewrite(path, put)


BAD_INPUT = {  # damage to a copy of the rgb8 scenes, options, the texts of the message, found only while reading
    "sizes differ": (lambda r: rewrite(r / "labels/s1.tif", lambda p: p[:, :-8]), {},
                     ["images/s1.tif (337x310)", "labels/s1.tif (329x310)", "sizes differ"], False),
    "CRS differ": (lambda r: rewrite(r / "labels/s1.tif", crs="EPSG:32634"), {},
                   ["images/s1.tif and", "labels/s1.tif", "CRS differ", "EPSG:2180", "EPSG:32634"], False),
    "transforms differ": (lambda r: rewrite(r / "labels/s2.tif", transform=pixel_grid((500001.0, 600000.0))), {},
                          ["images/s2.tif and", "labels/s2.tif", "transforms differ"], False),
    "label value not a class": (lambda r: bad_values(r / "labels/s2.tif"), {},
                                ["labels/s2.tif", "raster value(s) 7 (5 pixels), 9 (1 pixels)", "not in the class"],
                                True),
    "band out of range": (lambda r: None, {"bands": [1, 4]}, ["images/s0.tif", "band 4 is out of range",
                                                              "3 band(s)"], False),
    "rgb band out of range": (lambda r: None, {"rgb_bands": [1, 2, 5]}, ["images/s0.tif", "band 5 is out of range"],
                              False),
    "band counts differ": (lambda r: rewrite(r / "images/s3.tif", lambda p: np.concatenate([p, p[:1]])), {},
                           ["images/s3.tif: 4 bands", "images/s0.tif has 3 bands"], False),
    "dtypes differ": (lambda r: rewrite(r / "images/s2.tif", lambda p: p.astype(np.uint16)), {},
                      ["images/s2.tif: uint16 pixels", "images/s0.tif has uint8 pixels"], False),
    "unsupported dtype": (lambda r: rewrite(r / "images/s1.tif", lambda p: p.astype(np.int16)), {},
                          ["images/s1.tif: int16 pixels", "uint8, uint16, float32"], False),
    "pattern matches nothing": (lambda r: None, {"images": "photos/*.tif"}, ["no image raster matches",
                                                                            "'photos/*.tif'"], False),
    "image without label": (lambda r: (r / "labels/s1.tif").unlink(), {},
                            ["labels/s1.tif: label raster not found for image", "images/s1.tif"], False),
    "label without image": (lambda r: shutil.copy(r / "labels/s1.tif", r / "labels/extra.tif"), {},
                            ["labels/extra.tif: label raster without its image", "'extra'"], False),
    "scene twice in a split file": (lambda r: ((r / "train.txt").write_text("s0\ns1\ns0\n"),
                                               (r / "val.txt").write_text("s2\n")),
                                    {"split": {"train": "train.txt", "val": "val.txt"}},
                                    ["train.txt line 3: scene s0 is listed twice", "train.txt line 1"], False),
    "scene in two splits": (lambda r: ((r / "train.txt").write_text("s0\ns1\n"), (r / "val.txt").write_text("s1\n")),
                            {"split": {"train": "train.txt", "val": "val.txt"}},
                            ["val.txt line 1: scene s1 is listed twice", "train.txt line 2"], False),
    "unknown scene in a split file": (lambda r: ((r / "train.txt").write_text("s0\n"),
                                                 (r / "val.txt").write_text("s9\n")),
                                      {"split": {"train": "train.txt", "val": "val.txt"}},
                                      ["val.txt line 1: no scene 's9'"], False),
    "unreadable image": (lambda r: (r / "images/s2.tif").write_bytes(b"\x00garbage" * 100), {},
                         ["images/s2.tif: cannot read this image raster", "not recognized"], False),
    "truncated LZW image": (lambda r: truncate(r / "images/s0.tif"), {},
                            ["images/s0.tif: cannot read this image raster (corrupt or truncated?)"], True),
    "truncated plain image": (lambda r: truncate(r / "images/s2.tif"), {},
                              ["images/s2.tif: cannot read this image raster (corrupt or truncated?)"], True),
    "truncated label": (lambda r: truncate(r / "labels/s1.tif"), {},
                        ["labels/s1.tif: cannot read this label raster (corrupt or truncated?)"], True),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_naming_the_file_and_no_complete_cache(case, rgb8, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(rgb8[0], root)
    damage, options, texts, while_reading = BAD_INPUT[case]
    kwargs = {"classes": CLASSES, "tile_size": 128, "cache_dir": str(tmp_path / "cache"), **options}
    if not options:
        prepare(root, **kwargs)  # a complete cache, before the damage
    damage(root)
    refused_leaving_no_complete_cache(prepare, root, kwargs, texts, while_reading, tmp_path / "cache", "rasters")


@pytest.mark.parametrize("options, text", [
    ({"classes": None}, "classes must be a list of at least two class names"),
    ({"classes": ["a", "a"]}, "classes names a twice"),
    ({"values": {"background": 0}}, "no values for building, woodland, water, road"),
    ({"ignore": [1]}, "ignore value 1 is the raster value of class 'building'"),
    ({"tile_size": 0}, "tile_size must be a positive integer"),
    ({"scale": 0.3}, "scale 0.3 makes 128-pixel tiles 38.4 pixels"),
    ({"scale": 2}, "scale must be a number in (0, 1]"),
    ({"edge": "wrap"}, "edge must be one of pad, drop"),
    ({"bands": [1, 1]}, "bands must name each band once"),
    ({"rgb_bands": [1, 2]}, "rgb_bands must be three of the bands read"),
    ({"split": {"train": 0.5, "test": 0.5}}, "split must be a table with train, val"),
    ({"split": {"train": 0.5, "val": 0.6}}, "split shares must be positive and add up to 1"),
    ({"split": {"train": "train.txt", "val": 0.5}}, "either shares of the scenes (numbers) or split files"),
    ({"split": {"train": 0.25, "val": 0.25, "test": 0.25, "extra": 0.25}}, "split must be a table"),
    ({"split": {"train": "t.txt", "val": "v.txt"}}, "t.txt: split file not found"),
    ({"labels": "labels/*.tif"}, "labels must name a scene's label raster from its stem"),
    ({"tile_size": 512, "edge": "drop"}, "split train has no tile"),
])
def test_bad_options_are_one_line(options, text, rgb8, tmp_path):
    kwargs = {"classes": CLASSES, "tile_size": 128, **options}
    with pytest.raises(UserError) as caught:
        prepare(rgb8[0], cache_dir=tmp_path, **kwargs)
    assert "\n" not in str(caught.value) and text in str(caught.value), str(caught.value)


def test_too_few_scenes_for_the_shares(tmp_path):
    write_layout(tmp_path / "two", specs()[:2])
    with pytest.raises(UserError, match="2 scene\\(s\\) cannot be split into train, val, test"):
        prepare(tmp_path / "two", classes=CLASSES, tile_size=128, cache_dir=tmp_path / "cache")


def test_labels_beside_the_images_are_not_taken_for_images(tmp_path):
    for spec in specs()[:3]:
        write_scene(tmp_path / "flat", spec, images=".", labels="{stem}_mask.tif")
    cache = prepare(tmp_path / "flat", images="*.tif", labels="{stem}_mask.tif", classes=CLASSES, tile_size=128,
                    cache_dir=tmp_path / "cache")
    assert sorted(n for names in cache.manifest["scenes"].values() for n in names) == ["s0", "s1", "s2"]


# -- through the command line ----------------------------------------------------------------------------------------


def write_grid(path: Path, root: Path, extra: str = "") -> Path:
    path.write_text(dataset_grid("rasters end to end", f"""name = "rasters"
root = "{root}"
classes = {json.dumps(CLASSES)}
tile_size = 64
edge = "drop"
split = {{ train = 0.5, val = 0.25, test = 0.25 }}
{extra}"""), encoding="utf-8")
    return path


def test_a_grid_on_rasters_runs_end_to_end(rgb8, tmp_path):
    """uint8 RGB scenes without nodata, edge tiles dropped: fully annotated uint8 masks, which every part of the
    harness takes today."""
    out, board = tmp_path / "runs", tmp_path / "leaderboard.md"
    grid = write_grid(tmp_path / "rasters.toml", rgb8[0])
    assert main(["run", "--grid", str(grid), "--out", str(out), "--leaderboard", str(board)]) == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        rows = [(json.loads(c), json.loads(m)) for c, m in db.execute("SELECT config, metrics FROM cells "
                                                                      "WHERE status = 'done'")]
    assert len(rows) == 1
    config, metrics = rows[0]
    assert "root" not in config["dataset"]["kwargs"] and config["dataset"]["kwargs"]["tile_size"] == 64
    assert 0 <= metrics["test_miou"] <= 1 and metrics["test_tiles"] > 0
    assert "rasters" in board.read_text()


def test_bad_rasters_through_bench_run_are_one_line_exit_2(rgb8, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(rgb8[0], root)
    rewrite(root / "labels/s1.tif", crs="EPSG:32634")
    grid = write_grid(tmp_path / "rasters.toml", root)
    code = main(["run", "--grid", str(grid), "--dry-run", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "labels/s1.tif" in err and "CRS differ" in err, err


@pytest.mark.parametrize(("fixture", "in_chans"), [
    ("nir16", 4),  # uint16, four bands, label nodata: int8 masks with -1
    ("float32", 3),
    ("rgb8", 3),  # padded edges: -1 outside the scenes
])
def test_every_kind_of_raster_trains_end_to_end(fixture, in_chans, request, tmp_path):
    """The image dtypes and not-annotated pixels of rasters through training and scoring: the cell finishes with
    scores, its partial masks never label a not-annotated pixel (its labelled share is of the annotated pixels), and
    the model takes every band."""
    root, _ = request.getfixturevalue(fixture)
    out, board = tmp_path / "runs", tmp_path / "leaderboard.md"
    grid = write_grid(tmp_path / "rasters.toml", root)
    grid.write_text(grid.read_text().replace('edge = "drop"', 'edge = "pad"'))
    dataset = registry.create_dataset("rasters", root=str(root), classes=CLASSES, tile_size=64,
                                      split={"train": 0.5, "val": 0.25, "test": 0.25},
                                      cache_dir=str(tmp_path / "cache"))
    _, masks = dataset.split("train")
    assert masks.dtype == np.int8 and (masks == -1).any()  # padding, and nodata where the fixture has it
    assert dataset.in_chans == in_chans
    assert main(["run", "--grid", str(grid), "--out", str(out), "--leaderboard", str(board),
                 "--set", f"dataset.cache_dir={json.dumps(str(tmp_path / 'cache'))}"]) == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        ((metrics,),) = [(json.loads(m),) for (m,) in db.execute("SELECT metrics FROM cells WHERE status = 'done'")]
    assert 0 <= metrics["final_miou"] <= 1 and 0 <= metrics["test_miou"] <= 1
    assert metrics["labelled_fraction"] == pytest.approx(0.2, abs=0.01)


def test_bench_prepare_grid_prepares_a_rasters_cache_that_a_run_then_opens(rgb8, tmp_path, capsys):
    grid = write_grid(tmp_path / "rasters.toml", rgb8[0])
    cache = f"dataset.cache_dir={json.dumps(str(tmp_path / 'cache'))}"
    assert main(["prepare", "--grid", str(grid), "--set", cache]) == 0
    assert "rasters ready" in capsys.readouterr().out
    before = sorted(path.stat().st_mtime_ns for path in (tmp_path / "cache").rglob("*") if path.is_file())
    assert main(["run", "--grid", str(grid), "--set", cache, "--dry-run", "--out", str(tmp_path / "runs")]) == 0
    assert sorted(path.stat().st_mtime_ns for path in (tmp_path / "cache").rglob("*") if path.is_file()) == before


def test_pixel_sizes_are_the_training_scenes_own(tmp_path):
    """Training scenes at 0.25, 0.25 and 0.5 m, a validation scene at 2 m: the training scenes' two sizes, each once
    (what bench predict checks a scene's pixels against)."""
    write_layout(tmp_path, [SceneSpec("a", 40, 40), SceneSpec("b", 40, 40, seed=1),
                            SceneSpec("c", 40, 40, seed=2, pixel=0.5), SceneSpec("d", 40, 40, seed=3, pixel=2.0)])
    (tmp_path / "train.txt").write_text("a\nb\nc\n")
    (tmp_path / "val.txt").write_text("d\n")
    dataset = registry.create_dataset("rasters", root=str(tmp_path), classes=CLASSES, tile_size=32,
                                      split={"train": "train.txt", "val": "val.txt"}, cache_dir=str(tmp_path / "c"))
    assert dataset.pixel_sizes == (0.25, 0.5)


@pytest.mark.parametrize("dtype, nodata", [("uint16", 0), ("float32", float("nan")), ("float32", -9999.0)])
def test_which_pixels_hold_data_from_the_values_read_is_gdals_answer(dtype, nodata, tmp_path):
    """From the values already read (what preparing does) or from GDAL's masks (a second read): the same pixels, for
    a nodata value on every band, on one band only (the pixel holds data), and NaN."""
    rng = np.random.default_rng(0)
    image = rng.integers(1, 1000, (3, 40, 50)).astype(dtype)
    image[:, 5:15, 5:25] = nodata  # every band: no data
    image[0, 20:30, 10:20] = nodata  # one band: data all the same
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", height=40, width=50, count=3, dtype=dtype, nodata=nodata,
                       crs="EPSG:2180", transform=pixel_grid((0.0, 0.0))) as target:
        target.write(image)
    window = rasterio.windows.Window(3, 2, 40, 30)
    with rasterio.open(path) as source:
        pixels = np.moveaxis(source.read(window=window), 0, -1)
        from_values = registry.datasets.rasters.holds_data(source, [1, 2, 3], window, pixels)
        from_gdal = registry.datasets.rasters.holds_data(source, [1, 2, 3], window)
    assert from_values.tolist() == from_gdal.tolist()
    assert 0 < from_values.sum() < from_values.size and from_values[20 - 2, 12 - 3]
