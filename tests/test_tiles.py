"""The dataset ``tiles``: folders of image and mask files paired by ``{id}`` patterns; cached tiles equal an
independent reading of the files (Pillow and tifffile read whole files, NumPy does the rest) with index masks and with
colour masks, whole files and cut files, split folders, split files and shares, units of many files, every bad input
in one line with no cache claiming to be complete, and a grid run end to end.

The fixtures (tile_layout.py) write PNG, JPEG and TIFF pairs from the ``synthetic`` dataset's scenes, with index masks
and with DeepGlobe's colours.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
from grids import dataset_grid
from PIL import Image
from test_rasters import independent_starts
from tile_layout import DEEPGLOBE_COLOURS, TileSpec, write_tile_layout
from user_faults import refused_leaving_no_complete_cache

from bench.cli import main
from registry.datasets import tiles
from registry.datasets.tile_cache import MANIFEST, PROGRESS
from registry.errors import UserError

CLASSES = ["background", "building", "woodland", "water", "road"]
IDENTITY = {v: v for v in range(5)}
# DeepGlobe-like: background is "unknown" (black, not annotated), so its class colour (yellow) never appears
UNKNOWN = {**DEEPGLOBE_COLOURS, 0: [(0, 0, 0)]}
COLOURS = {"background": [255, 255, 0], "building": "#ff00ff", "woodland": [[0, 255, 0], "#00c800"],
           "water": [0, 0, 255], "road": [255, 255, 255]}


def packed(colour) -> int:
    return (colour[0] << 16) | (colour[1] << 8) | colour[2]


COLOUR_TABLE = {packed(c): cls for cls, cs in DEEPGLOBE_COLOURS.items() for c in cs} | {0: -1}


@pytest.fixture(scope="module")
def index_png(tmp_path_factory):
    """Eight 64-pixel RGB PNGs with index masks named ``{id}_m.png`` in masks/."""
    root = tmp_path_factory.mktemp("tiles-index")
    return root, write_tile_layout(root, [TileSpec(f"t{i}", seed=i) for i in range(8)],
                                   masks="masks/{id}_m.png")


@pytest.fixture(scope="module")
def deepglobe(tmp_path_factory):
    """DeepGlobe-like: ``{id}_sat.jpg`` and colour masks ``{id}_mask.png`` side by side in train/."""
    root = tmp_path_factory.mktemp("tiles-deepglobe")
    return root, write_tile_layout(root, [TileSpec(f"{100 + i}", seed=i, colours=UNKNOWN) for i in range(6)],
                                   images="train/{id}_sat.jpg", masks="train/{id}_mask.png")


@pytest.fixture(scope="module")
def isprs(tmp_path_factory):
    """ISPRS-like: four-band uint16 TIFFs of several sizes with RGB TIFF colour masks, in split folders."""
    root = tmp_path_factory.mktemp("tiles-isprs")
    sizes = [(100, 90), (130, 70), (64, 64), (90, 120), (70, 100)]
    specs = [TileSpec(f"area{i}", h, w, bands=4, dtype="uint16", seed=i, colours=DEEPGLOBE_COLOURS,
                      split="Train" if i < 3 else "Val") for i, (h, w) in enumerate(sizes)]
    return root, write_tile_layout(root, specs, images="{split}/top/{id}.tif", masks="{split}/gts/{id}.tif")


def read_file(path: Path) -> np.ndarray:
    """A whole file, ``[H, W, C]``, read at once: TIFFs by tifffile, PNGs by Pillow, JPEGs by rasterio (a JPEG's
    pixels are its decoder's: Pillow's libjpeg-turbo rounds some of them otherwise than GDAL's libjpeg)."""
    if path.suffix == ".jpg":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return np.moveaxis(src.read(), 0, -1)
    pixels = tifffile.imread(path) if path.suffix == ".tif" else np.asarray(Image.open(path))
    return pixels if pixels.ndim == 3 else pixels[..., None]


def classes_of(mask: np.ndarray, table: dict[int, int], colours: bool) -> np.ndarray:
    keys = (mask[..., 0].astype(np.int64) << 16 | mask[..., 1].astype(np.int64) << 8 | mask[..., 2]) if colours \
        else mask[..., 0].astype(np.int64)
    values, inverse = np.unique(keys, return_inverse=True)
    assert all(int(v) in table for v in values)
    return np.array([table[int(v)] for v in values], np.int16)[inverse].reshape(keys.shape)


def independent_tiles(tile, table, colours, size=None, stride=None, edge="pad", bands=None):
    """[(id, image, mask)] of one written tile: whole, or cut as rasters' scenes are."""
    image, mask = read_file(tile.image_path), classes_of(read_file(tile.mask_path), table, colours)
    if bands is not None:
        image = image[..., [b - 1 for b in bands]]
    if size is None:
        return [(tile.id, image, mask)]
    height, width = mask.shape
    padded = np.zeros((height + size, width + size, image.shape[-1]), image.dtype)
    padded[:height, :width] = image
    padded_mask = np.full((height + size, width + size), -1, np.int16)
    padded_mask[:height, :width] = mask
    stride = stride or size
    return [(f"{tile.id}_{y}_{x}", padded[y:y + size, x:x + size], padded_mask[y:y + size, x:x + size])
            for y in independent_starts(height, size, stride, edge) for x in independent_starts(width, size, stride,
                                                                                               edge)]


def assert_cache_is_independent(cache, written, table, colours, **cut):
    dataset = tiles.Tiles(cache)
    for split in dataset.splits:
        expected = [t for name in cache.manifest["scenes"][split]
                    for t in independent_tiles(written[name], table, colours, **cut)]
        assert cache.ids[split] == [tile_id for tile_id, _, _ in expected]
        images, masks = dataset.split(split)
        for index, (tile_id, image, mask) in enumerate(expected):
            assert images[index].dtype == image.dtype and np.array_equal(images[index], image), tile_id
            assert np.array_equal(masks[index], mask), tile_id
    return dataset


def cut(root: Path, tmp_path: Path, **kwargs):
    kwargs.setdefault("classes", CLASSES)
    return tiles.prepare(root, cache_dir=tmp_path / "cache", **kwargs)


# -- what the cache holds --------------------------------------------------------------------------------------------


def test_whole_png_files_with_index_masks_are_one_tile_each(index_png, tmp_path):
    root, written = index_png
    cache = cut(root, tmp_path, masks="masks/{id}_m.png")
    dataset = assert_cache_is_independent(cache, written, IDENTITY, False)
    assert sorted(i for ids in cache.ids.values() for i in ids) == sorted(written)
    assert cache.manifest["counts"] == {"train": 6, "val": 1, "test": 1} and dataset.rgb_bands == (0, 1, 2)
    assert cache.manifest["mask_dtype"] == "uint8" and cache.folder.name.startswith("tiles-64-")
    train = np.concatenate([read_file(written[n].image_path).reshape(-1, 3) for n in cache.manifest["scenes"]["train"]])
    assert np.allclose(dataset.mean, train.mean(0) / 255) and np.allclose(dataset.std, train.std(0) / 255)


def test_colour_masks_side_by_side_with_jpeg_images_and_an_ignored_colour(deepglobe, tmp_path):
    root, written = deepglobe
    cache = cut(root, tmp_path, images="train/{id}_sat.jpg", masks="train/{id}_mask.png", colours=COLOURS,
                ignore=[[0, 0, 0]], split={"train": 0.5, "val": 0.5})
    assert_cache_is_independent(cache, written, COLOUR_TABLE, True)
    masks = np.concatenate([tiles.Tiles(cache).split(s)[1] for s in ("train", "val")])
    assert masks.dtype == np.int8 and (masks == -1).any() and set(np.unique(masks)) <= {-1, 1, 2, 3, 4}


def test_split_folders_cut_files_of_several_sizes_and_pick_bands(isprs, tmp_path):
    root, written = isprs
    options = {"images": "{split}/top/{id}.tif", "masks": "{split}/gts/{id}.tif", "colours": COLOURS,
               "split": {"train": "Train", "val": "Val"}, "tile_size": 48, "stride": 40, "bands": [4, 1, 2]}
    cache = cut(root, tmp_path, **options)
    assert cache.manifest["scenes"] == {"train": ["area0", "area1", "area2"], "val": ["area3", "area4"]}
    dataset = assert_cache_is_independent(cache, written, COLOUR_TABLE, True, size=48, stride=40,
                                          bands=[4, 1, 2])
    assert dataset.split("train")[0].dtype == np.uint16 and dataset.in_chans == 3
    dropped = cut(root, tmp_path / "drop", **options, edge="drop")
    assert_cache_is_independent(dropped, written, COLOUR_TABLE, True, size=48, stride=40, edge="drop",
                                bands=[4, 1, 2])


def test_split_files_list_ids_or_file_names_and_scale_halves_whole_files(index_png, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(index_png[0], root)
    (root / "train.txt").write_text("t3\n# a comment\n\nt1.png\nt0\n")
    (root / "val.txt").write_text("t5\n")
    cache = cut(root, tmp_path, masks="masks/{id}_m.png", split={"train": "train.txt", "val": "val.txt"}, scale=0.5)
    assert cache.ids == {"train": ["t3", "t1", "t0"], "val": ["t5"]} and cache.manifest["tile_size"] == 32
    images, masks = tiles.Tiles(cache).split("train")
    image, mask = read_file(index_png[1]["t3"].image_path), read_file(index_png[1]["t3"].mask_path)[..., 0]
    assert np.abs(images[0].astype(int) - image.reshape(32, 2, 32, 2, 3).mean((1, 3))).max() <= 1
    assert np.array_equal(masks[0], mask[1::2, 1::2])


def test_files_are_prepared_in_units_of_many_and_an_interruption_resumes(tmp_path, monkeypatch):
    root = tmp_path / "many"
    write_tile_layout(root, [TileSpec(f"{i:03d}", 32, 32, seed=i) for i in range(40)])
    monkeypatch.setattr(tiles, "UNIT_TILES", 10)
    straight = cut(root, tmp_path / "straight", split={"train": 0.5, "val": 0.5})
    assert len(straight.manifest["fingerprints"]) == 4  # 20 train and 20 val files, 10 a unit

    def interrupt(done, total):
        if done == 11:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cut(root, tmp_path / "resumed", split={"train": 0.5, "val": 0.5}, progress=interrupt)
    [folder] = list((tmp_path / "resumed" / "cache").iterdir())
    assert not (folder / MANIFEST).exists() and len(json.loads((folder / PROGRESS).read_text())["units"]) == 1
    totals = []
    resumed = cut(root, tmp_path / "resumed", split={"train": 0.5, "val": 0.5},
                  progress=lambda done, total: totals.append(total))
    assert set(totals) == {30}
    for split in straight.ids:
        for ours, theirs in zip(resumed.split(split), straight.split(split)):
            assert np.array_equal(ours, theirs)
    assert resumed.manifest["mean"] == straight.manifest["mean"]


def test_a_file_both_patterns_match_belongs_to_the_more_specific(tmp_path):
    write_tile_layout(tmp_path / "flat", [TileSpec(f"a{i}", seed=i) for i in range(3)], images="{id}.png",
                      masks="{id}_m.png")
    cache = cut(tmp_path / "flat", tmp_path, images="{id}.png", masks="{id}_m.png")
    assert sorted(n for names in cache.manifest["scenes"].values() for n in names) == ["a0", "a1", "a2"]
    write_tile_layout(tmp_path / "rgb", [TileSpec(f"b{i}", seed=i) for i in range(3)], images="{id}_rgb.png",
                      masks="{id}.png")
    cache = cut(tmp_path / "rgb", tmp_path, images="{id}_rgb.png", masks="{id}.png")
    assert sorted(n for names in cache.manifest["scenes"].values() for n in names) == ["b0", "b1", "b2"]


# -- bad input: one line naming the file and the problem, and no cache claiming to be complete -----------------------


def truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def put(path: Path, change) -> None:
    """The file at ``path`` written again, its pixels changed by ``change``."""
    pixels = np.array(read_file(path))
    pixels = change(pixels)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def odd_colours(pixels):
    pixels[10, 20:25] = (1, 2, 3)
    pixels[11, 0] = (9, 9, 9)
    return pixels


def odd_values(pixels):
    pixels[10, 20:25] = 7
    return pixels


FLAT = {"images": "train/{id}_sat.jpg", "masks": "train/{id}_mask.png", "colours": COLOURS, "ignore": ["#000000"],
        "split": {"train": 0.5, "val": 0.5}}
INDEX = {"masks": "masks/{id}_m.png"}
BAD_INPUT = {  # fixture, damage, options, the texts of the message, found only while reading pixels
    "colour not in the table": ("deepglobe", lambda r: put(r / "train/102_mask.png", odd_colours), FLAT,
                                ["train/102_mask.png: mask colour(s) [1, 2, 3] (5 pixels), [9, 9, 9] (1 pixels) not in "
                                 "the class table", "[255, 255, 0]"], True),
    "value not in the table": ("index_png", lambda r: put(r / "masks/t2_m.png", odd_values), INDEX,
                               ["masks/t2_m.png: mask value(s) 7 (5 pixels) not in the class table"], True),
    "band out of range": ("index_png", lambda r: None, {**INDEX, "bands": [1, 4]},
                          ["images/t0.png: band 4 is out of range: this image has 3 band(s)"], False),
    "band counts differ": ("index_png", lambda r: put(r / "images/t3.png", lambda p: np.dstack([p, p[..., :1]])),
                           INDEX, ["images/t3.png: 4 bands, but", "images/t0.png has 3 bands", "every file"], False),
    "dtypes differ": ("isprs", lambda r: tifffile.imwrite(r / "Train/top/area1.tif",
                                                          tifffile.imread(r / "Train/top/area1.tif").astype(np.uint8)),
                      {"images": "{split}/top/{id}.tif", "masks": "{split}/gts/{id}.tif", "colours": COLOURS,
                       "split": {"train": "Train", "val": "Val"}, "tile_size": 48},
                      ["Train/top/area1.tif: uint8 pixels, but", "area0.tif has uint16 pixels"], False),
    "sizes differ": ("index_png", lambda r: put(r / "masks/t1_m.png", lambda p: p[:-4]), INDEX,
                     ["images/t1.png (64x64) and", "masks/t1_m.png (60x64): image and mask sizes differ"], False),
    "whole files of two sizes": ("index_png", lambda r: (put(r / "images/t4.png", lambda p: p[:48, :48]),
                                                         put(r / "masks/t4_m.png", lambda p: p[:48, :48])), INDEX,
                                 ["images/t4.png is 48x48 pixels", "give tile_size"], False),
    "colour mask of one band": ("index_png", lambda r: None, {**INDEX, "colours": COLOURS},
                                ["masks/t0_m.png: colour masks need three 8-bit bands", "1 band(s)"], False),
    "pattern matches nothing": ("index_png", lambda r: None, {**INDEX, "images": "photos/{id}.png"},
                                ["no image matches images = 'photos/{id}.png'"], False),
    "no files in a split folder": ("isprs", lambda r: shutil.rmtree(r / "Val/top"),
                                   {"images": "{split}/top/{id}.tif", "masks": "{split}/gts/{id}.tif",
                                    "colours": COLOURS, "split": {"train": "Train", "val": "Val"}, "tile_size": 48},
                                   ["no image matches images = '{split}/top/{id}.tif' for split val (folder 'Val')"],
                                   False),
    "image without its mask": ("index_png", lambda r: (r / "masks/t1_m.png").unlink(), INDEX,
                               ["masks/t1_m.png: mask not found for image", "images/t1.png"], False),
    "mask without its image": ("index_png", lambda r: shutil.copy(r / "masks/t1_m.png", r / "masks/extra_m.png"),
                               INDEX, ["masks/extra_m.png: mask without its image", "the id 'extra'"], False),
    "a file twice in a split file": ("index_png", lambda r: ((r / "train.txt").write_text("t0\nt1\nt0.png\n"),
                                                             (r / "val.txt").write_text("t2\n")),
                                     {**INDEX, "split": {"train": "train.txt", "val": "val.txt"}},
                                     ["train.txt line 3: file t0 is listed twice (also at train.txt line 1)"], False),
    "a file in two split files": ("index_png", lambda r: ((r / "train.txt").write_text("t0\nt1\n"),
                                                          (r / "val.txt").write_text("t1\n")),
                                  {**INDEX, "split": {"train": "train.txt", "val": "val.txt"}},
                                  ["val.txt line 1: file t1 is listed twice (also at train.txt line 2)"], False),
    "a file in two split folders": ("isprs", lambda r: (shutil.copy(r / "Train/top/area0.tif", r / "Val/top"),
                                                        shutil.copy(r / "Train/gts/area0.tif", r / "Val/gts")),
                                    {"images": "{split}/top/{id}.tif", "masks": "{split}/gts/{id}.tif",
                                     "colours": COLOURS, "split": {"train": "Train", "val": "Val"}, "tile_size": 48},
                                    ["Val/top/area0.tif: file area0 is in two splits, train", "and val"], False),
    "unreadable image": ("index_png", lambda r: (r / "images/t2.png").write_bytes(b"\x00garbage" * 100), INDEX,
                         ["images/t2.png: cannot read this image (corrupt or truncated?)"], False),
    "truncated PNG image": ("index_png", lambda r: truncate(r / "images/t5.png", 0.9), INDEX,
                            ["images/t5.png: cannot read this image (corrupt or truncated?)"], False),
    "truncated PNG mask": ("index_png", lambda r: truncate(r / "masks/t6_m.png", 0.95), INDEX,
                           ["masks/t6_m.png: cannot read this mask (corrupt or truncated?)"], False),
    "truncated JPEG image": ("deepglobe", lambda r: truncate(r / "train/103_sat.jpg", 0.7), FLAT,
                             ["train/103_sat.jpg: cannot read this image (corrupt or truncated?)"], True),
    "truncated TIFF mask": ("isprs", lambda r: truncate(r / "Val/gts/area4.tif", 0.6),
                            {"images": "{split}/top/{id}.tif", "masks": "{split}/gts/{id}.tif", "colours": COLOURS,
                             "split": {"train": "Train", "val": "Val"}, "tile_size": 48},
                            ["Val/gts/area4.tif: cannot read this mask (corrupt or truncated?)"], True),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_naming_the_file_and_no_complete_cache(case, request, tmp_path):
    fixture, damage, options, texts, while_reading = BAD_INPUT[case]
    root = tmp_path / "copy"
    shutil.copytree(request.getfixturevalue(fixture)[0], root)
    kwargs = {"classes": CLASSES, "cache_dir": str(tmp_path / "cache"), **options}
    if while_reading:
        tiles.prepare(root, **kwargs)  # a complete cache, before the damage
    damage(root)
    refused_leaving_no_complete_cache(tiles.prepare, root, kwargs, texts, while_reading, tmp_path / "cache", "tiles")


@pytest.mark.parametrize("options, text", [
    ({"images": "images/*.png"}, "images must be a path under root with {id} once"),
    ({"masks": "masks/{id}_{id}.png"}, "masks must be a path under root with {id} once"),
    ({"masks": "images/{id}.png"}, "images and masks must be different paths"),
    ({"images": "{split}/{id}.png"}, "{split} must be in both images and masks or in neither"),
    ({"images": "{split}/i/{id}.png", "masks": "{split}/m/{id}.png", "split": {"train": 0.5, "val": 0.5}},
     "split must be a table from train, val and optionally test to their folders' names"),
    ({"values": {}, "colours": {}}, "give values (for index masks) or colours (for colour masks), not both"),
    ({"colours": {**COLOURS, "road": [256, 0, 0]}}, "colours.road must be a colour [r, g, b] (each 0..255)"),
    ({"colours": {**COLOURS, "road": "#fff"}}, "colours.road must be a colour"),
    ({"colours": {**COLOURS, "road": [0, 0, 255]}}, "colour [0, 0, 255] is given to both 'water' and 'road'"),
    ({"colours": {"background": [0, 0, 0]}},
     "colours must give the colours of every class and no other name (no colours for building"),
    ({"colours": COLOURS, "ignore": [[0, 0, 255]]}, "ignore colour [0, 0, 255] is the colour of class 'water'"),
    ({"stride": 32}, "stride needs tile_size"),
    ({"tile_size": 0}, "tiles: tile_size must be a positive integer"),
    ({"scale": 0.3}, "tiles: scale 0.3 makes 64-pixel tiles 19.2 pixels"),
    ({"classes": ["a"]}, "tiles: classes must be a list of at least two class names"),
    ({"split": {"train": 1.0, "val": 1.0}}, "tiles: split shares must be positive and add up to 1"),
    ({"split": {"train": "t.txt", "val": "v.txt"}}, "t.txt: split file not found"),
])
def test_bad_options_are_one_line(options, text, index_png, tmp_path):
    kwargs = {"classes": CLASSES, "masks": "masks/{id}_m.png", **options}
    with pytest.raises(UserError) as caught:
        tiles.prepare(index_png[0], cache_dir=tmp_path, **kwargs)
    assert "\n" not in str(caught.value) and text in str(caught.value), str(caught.value)


# -- through the command line ----------------------------------------------------------------------------------------


def write_grid(path: Path, dataset: str) -> Path:
    path.write_text(dataset_grid("tiles end to end", f"""name = "tiles"
classes = {json.dumps(CLASSES)}
{dataset}"""), encoding="utf-8")
    return path


@pytest.mark.parametrize("fixture, dataset", [
    ("index_png", 'masks = "masks/{id}_m.png"\nsplit = { train = 0.5, val = 0.25, test = 0.25 }'),
    ("deepglobe", 'images = "train/{id}_sat.jpg"\nmasks = "train/{id}_mask.png"\nignore = [[0, 0, 0]]\n'
                  'split = { train = 0.5, val = 0.25, test = 0.25 }\n'
                  'colours = { background = [255, 255, 0], building = "#ff00ff", woodland = [[0, 255, 0], '
                  '[0, 200, 0]], water = [0, 0, 255], road = [255, 255, 255] }'),
])
def test_a_grid_on_tiles_runs_end_to_end(fixture, dataset, request, tmp_path):
    root = request.getfixturevalue(fixture)[0]
    out, board = tmp_path / "runs", tmp_path / "leaderboard.md"
    grid = write_grid(tmp_path / "tiles.toml", f'root = "{root}"\n{dataset}')
    assert main(["run", "--grid", str(grid), "--out", str(out), "--leaderboard", str(board)]) == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        ((config, metrics),) = [(json.loads(c), json.loads(m)) for c, m in
                                db.execute("SELECT config, metrics FROM cells WHERE status = 'done'")]
    assert "root" not in config["dataset"]["kwargs"]
    assert 0 <= metrics["test_miou"] <= 1 and metrics["test_tiles"] > 0
    assert metrics["labelled_fraction"] == pytest.approx(0.2, abs=0.02)


def test_bad_tiles_through_bench_run_are_one_line_exit_2(index_png, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(index_png[0], root)
    (root / "masks/t3_m.png").unlink()
    grid = write_grid(tmp_path / "tiles.toml", f'root = "{root}"\nmasks = "masks/{{id}}_m.png"')
    code = main(["run", "--grid", str(grid), "--dry-run", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "masks/t3_m.png: mask not found" in err, err
