"""LandCover.ai: the split.py tiling, both layouts, resizing, the resumable cache, and every bad input.

The fixtures (conftest.py, landcoverai_layout.py) write small orthophotos of sizes that are not multiples of 512, in
LZW, Deflate, JPEG and uncompressed TIFFs, stripped and tiled, with split files, and split.py's tiles of them.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

import registry
from bench.cli import main
from registry.datasets.image_files import read_tiff
from registry.datasets.landcoverai import SPLITS, prepare, read_split_ids, tile_grid
from registry.datasets.tile_cache import MANIFEST, PROGRESS
from registry.errors import UserError
from registry.locks import folder_lock


def split_py_tiles(name: str, image: np.ndarray) -> list[tuple[str, int, int]]:
    """The dataset's split.py loop, as it is written there: slice, keep full tiles, count every position."""
    found, k = [], 0
    for y in range(0, image.shape[0], 512):
        for x in range(0, image.shape[1], 512):
            tile = image[y:y + 512, x:x + 512]
            if tile.shape[0] == 512 and tile.shape[1] == 512:
                found.append((f"{name}_{k}", y, x))
            k += 1
    return found


def locate(orthophotos) -> dict[str, tuple[object, int, int]]:
    """tile id -> (orthophoto, y, x)."""
    return {tile_id: (ortho, y, x)
            for ortho in orthophotos for tile_id, y, x in tile_grid(ortho.name, *ortho.mask.shape)}


def cache_folders(cache_dir: Path) -> list[Path]:
    return [p for p in cache_dir.iterdir() if p.is_dir()] if cache_dir.exists() else []


def test_tiling_follows_split_py_with_gaps():
    assert list(tile_grid("A", 1100, 1300)) == [("A_0", 0, 0), ("A_1", 0, 512), ("A_3", 512, 0), ("A_4", 512, 512)]
    for height, width in [(512, 512), (511, 2000), (1030, 1600), (9470, 9216), (4299, 4737)]:
        assert list(tile_grid("B", height, width)) == split_py_tiles("B", np.empty((height, width), np.uint8))


def test_archive_ids_counts_and_order(landcoverai_archive):
    root = landcoverai_archive[0]
    cache = prepare(root, size=64)
    expected = read_split_ids(root)
    assert cache.ids == expected
    assert sum(len(v) for v in expected.values()) == 4 + 6 + 2 + 2  # full tiles of the four fixture orthophotos
    listed = {tile_id for ids in expected.values() for tile_id in ids}
    assert "M-33-21-D-c-4-2_4" in listed and "M-33-21-D-c-4-2_3" not in listed  # a gap at the right edge
    for split in SPLITS:
        images, masks = cache.split(split)
        assert images.shape == (len(expected[split]), 64, 64, 3) and masks.shape == (len(expected[split]), 64, 64)
        assert isinstance(images, np.memmap)


def test_tiles_at_512_equal_direct_slices(landcoverai_archive):
    root, orthophotos = landcoverai_archive
    cache = prepare(root, size=512)
    where = locate(orthophotos)
    for split in SPLITS:
        images, masks = cache.split(split)
        for index, tile_id in enumerate(cache.ids[split]):
            ortho, y, x = where[tile_id]
            assert np.array_equal(images[index], ortho.image[y:y + 512, x:x + 512]), tile_id
            assert np.array_equal(masks[index], ortho.mask[y:y + 512, x:x + 512]), tile_id


def test_resizing_area_for_images_pixel_centres_for_masks(landcoverai_archive):
    root, orthophotos = landcoverai_archive
    cache = prepare(root, size=384)
    where = locate(orthophotos)
    images, masks = cache.split("train")
    for index, tile_id in enumerate(cache.ids["train"]):
        ortho, y, x = where[tile_id]
        mask = torch.from_numpy(ortho.mask[y:y + 512, x:x + 512].copy())[None, None].float()
        expected = F.interpolate(mask, size=(384, 384), mode="nearest-exact")[0, 0].to(torch.uint8).numpy()
        assert np.array_equal(masks[index], expected)
        image = torch.from_numpy(ortho.image[y:y + 512, x:x + 512].copy()).permute(2, 0, 1)[None].double()
        smooth = F.interpolate(image, size=(384, 384), mode="bilinear", antialias=True)[0].permute(1, 2, 0).numpy()
        difference = np.abs(images[index].astype(np.float64) - smooth)
        assert difference.mean() < 2.0  # an area filter, close to antialiased bilinear, not a nearest sample
        assert abs(images[index].mean() - image.mean().item()) < 0.5  # an area filter keeps the mean brightness


def test_three_channel_png_masks_and_both_layouts_agree(landcoverai_archive, landcoverai_tiles):
    archive = prepare(landcoverai_archive[0], size=384)
    tiles = prepare(landcoverai_tiles, size=384)
    assert tiles.manifest["source"]["layout"] == "tiles" and archive.manifest["source"]["layout"] == "archive"
    first = tiles.ids["train"][0]
    assert np.asarray(Image.open(landcoverai_tiles / "output" / f"{first}_m.png")).shape == (512, 512, 3)
    assert tiles.ids == archive.ids
    for split in SPLITS:
        (tile_images, tile_masks), (archive_images, archive_masks) = tiles.split(split), archive.split(split)
        assert np.array_equal(tile_masks, archive_masks)
        # The tiles are JPEGs of the same pixels (quality 95): close, not equal.
        assert np.abs(tile_images.astype(np.int16) - archive_images).mean() < 4


def test_dataset_entry_reads_the_cache_and_its_statistics(landcoverai_archive):
    dataset = registry.create_dataset("landcoverai", root=str(landcoverai_archive[0]), size=64)
    assert dataset.scale == 64 / 512  # what `bench predict` resamples whole orthophotos by
    images, _ = dataset.split("train")
    expected = images.reshape(-1, 3).astype(np.float64) / 255
    assert np.allclose(dataset.mean, expected.mean(0), atol=1e-5)
    assert np.allclose(dataset.std, expected.std(0), atol=1e-5)
    with pytest.raises(UserError, match="unknown split 'validation'"):
        dataset.split("validation")


def test_interrupted_prepare_resumes_without_starting_over(landcoverai_archive, tmp_path):
    root, _ = landcoverai_archive
    ids = read_split_ids(root)
    first_unit_tiles = sum(tile_id.startswith("M-33-20-") for split_ids in ids.values() for tile_id in split_ids)

    def interrupt_in_second_unit(done: int, total: int) -> None:
        if done == first_unit_tiles + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(root, size=64, cache_dir=tmp_path / "cache", progress=interrupt_in_second_unit)
    [folder] = cache_folders(tmp_path / "cache")
    assert not (folder / MANIFEST).exists()  # nothing claims to be complete
    assert list(json.loads((folder / PROGRESS).read_text())["units"]) == ["M-33-20-D-c-4-2"]

    resumed = []
    cache = prepare(root, size=64, cache_dir=tmp_path / "cache", progress=lambda done, total: resumed.append(total))
    assert set(resumed) == {sum(map(len, ids.values())) - first_unit_tiles}  # only the unfinished orthophotos were read
    straight = prepare(root, size=64, cache_dir=tmp_path / "straight")
    for split in SPLITS:
        for resumed_array, straight_array in zip(cache.split(split), straight.split(split)):
            assert np.array_equal(resumed_array, straight_array)
    assert cache.manifest["mean"] == straight.manifest["mean"] and cache.manifest["std"] == straight.manifest["std"]


def test_a_changed_source_file_is_prepared_again(landcoverai_archive, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(landcoverai_archive[0], root)
    prepare(root, size=64)
    mask_path = root / "masks" / "M-33-22-D-c-4-2.tif"
    mask = tifffile.imread(mask_path)
    tifffile.imwrite(mask_path, np.full_like(mask, 3))  # all water now
    seen = []
    cache = prepare(root, size=64, progress=lambda done, total: seen.append(total))
    assert set(seen) == {2}  # that orthophoto's two tiles, nothing else
    for split in SPLITS:
        _, masks = cache.split(split)
        for index, tile_id in enumerate(cache.ids[split]):
            if tile_id.startswith("M-33-22-"):
                assert (masks[index] == 3).all()
    assert prepare(root, size=64).manifest == cache.manifest  # and now it is complete: opened, not redone


def test_a_cache_another_process_prepares_is_waited_for_then_opened(landcoverai_archive, tmp_path, capfd):
    """Two cells starting on one machine at once both find the cache missing: the second waits for the first's lock
    (saying so), then opens the cache the first completed instead of failing or writing it again."""
    root, _ = landcoverai_archive
    complete = prepare(root, size=64, cache_dir=tmp_path / "elsewhere")
    [source] = cache_folders(tmp_path / "elsewhere")
    folder = tmp_path / "cache" / source.name
    written, opened = [], []
    with folder_lock(folder, "held by the test"):  # the first process, in the middle of its preparation
        waiter = threading.Thread(target=lambda: opened.append(
            prepare(root, size=64, cache_dir=tmp_path / "cache", progress=lambda *done: written.append(done))))
        waiter.start()
        for _ in range(200):
            if "another process is preparing this cache; waiting for it" in capfd.readouterr().err:
                break
            time.sleep(0.05)
        else:
            pytest.fail("prepare did not say it waits")
        assert waiter.is_alive() and not opened
        for path in sorted(source.glob("*"), key=lambda p: p.name == MANIFEST):  # the manifest last, as a writer does
            shutil.copy(path, folder / path.name)
    waiter.join(timeout=30)
    assert not written and opened[0].manifest == complete.manifest
    for split in SPLITS:
        for ours, theirs in zip(opened[0].split(split), complete.split(split)):
            assert np.array_equal(ours, theirs)


# -- bad input: one line naming the path, exit code 2, no cache claiming to be complete -------------------------------


def damaged_copy(source: Path, tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(source, root)
    return root


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def resize_mask(path: Path) -> None:
    tifffile.imwrite(path, tifffile.imread(path)[:-8])


def add_bad_class(path: Path) -> None:
    mask = tifffile.imread(path)
    mask[3, 5] = 7
    tifffile.imwrite(path, mask)


ARCHIVE_DAMAGE = {
    "missing split file": (lambda r: (r / "val.txt").unlink(), "val.txt", "split file not found"),
    "missing mask": (lambda r: (r / "masks" / "M-33-21-D-c-4-2.tif").unlink(), "masks/M-33-21-D-c-4-2.tif",
                     "mask not found"),
    "sizes differ": (lambda r: resize_mask(r / "masks" / "M-33-20-D-c-4-2.tif"), "images/M-33-20-D-c-4-2.tif",
                     "masks/M-33-20-D-c-4-2.tif"),
    "corrupt tiff": (lambda r: (r / "images" / "M-33-21-D-c-4-2.tif").write_bytes(b"\x00garbage" * 100),
                     "images/M-33-21-D-c-4-2.tif", "cannot read"),
    "truncated lzw tiff": (lambda r: truncate(r / "images" / "M-33-20-D-c-4-2.tif"), "images/M-33-20-D-c-4-2.tif",
                           "corrupt or truncated"),
    "truncated jpeg tiff": (lambda r: truncate(r / "images" / "M-33-22-D-c-4-2.tif"), "images/M-33-22-D-c-4-2.tif",
                            "corrupt or truncated"),
    "truncated plain tiff": (lambda r: truncate(r / "images" / "M-33-23-D-c-4-2.tif"), "images/M-33-23-D-c-4-2.tif",
                             "corrupt or truncated"),
    "mask out of range": (lambda r: add_bad_class(r / "masks" / "M-33-23-D-c-4-2.tif"), "masks/M-33-23-D-c-4-2.tif",
                          "mask value 7 at row 3, column 5"),
    "id without tile": (lambda r: (r / "val.txt").open("a").write("M-33-21-D-c-4-2_3\n"), "val.txt",
                        "M-33-21-D-c-4-2_3"),
    "unknown orthophoto": (lambda r: (r / "test.txt").open("a").write("M-34-99-A-a-1-1_0\n"), "test.txt",
                           "M-34-99-A-a-1-1_0"),
    "malformed id": (lambda r: (r / "train.txt").open("a").write("not an id\n"), "train.txt line", "not a tile id"),
}


FOUND_WHILE_READING = ("truncated lzw tiff", "truncated jpeg tiff", "truncated plain tiff", "mask out of range")


def prepare_command(root: Path, cache_dir: Path) -> list[str]:
    return ["prepare", "landcoverai", "--root", str(root), "--size", "64", "--cache-dir", str(cache_dir)]


def assert_one_line_error(capsys, code: int, *expected: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for text in expected:
        assert text in err, err


@pytest.mark.parametrize("damage", list(ARCHIVE_DAMAGE))
def test_damaged_archive_is_one_line_exit_2_and_no_complete_cache(damage, landcoverai_archive, tmp_path, capsys):
    root = damaged_copy(landcoverai_archive[0], tmp_path)
    cache_dir = tmp_path / "cache"
    assert main(prepare_command(root, cache_dir)) == 0  # a complete cache, before the damage
    capsys.readouterr()
    make_damage, path_text, message = ARCHIVE_DAMAGE[damage]
    make_damage(root)
    assert_one_line_error(capsys, main(prepare_command(root, cache_dir)), path_text, message)
    if damage in FOUND_WHILE_READING:  # the cache was being rewritten: its completeness mark is gone
        assert not any((folder / MANIFEST).exists() for folder in cache_folders(cache_dir))
    with pytest.raises(UserError):  # and the dataset is never served from a cache of a damaged copy
        registry.create_dataset("landcoverai", root=str(root), size=64, cache_dir=str(cache_dir))


TILES_DAMAGE = {  # damage, and the texts the message must hold, for tile `tile` of the training split
    "missing mask png": (lambda out, tile: (out / f"{tile}_m.png").unlink(), lambda tile: (f"{tile}_m.png",
                                                                                          "mask not found")),
    "truncated png": (lambda out, tile: truncate(out / f"{tile}_m.png"), lambda tile: (f"{tile}_m.png",
                                                                                      "corrupt or truncated")),
    "truncated jpeg": (lambda out, tile: truncate(out / f"{tile}.jpg"), lambda tile: (f"{tile}.jpg",
                                                                                     "corrupt or truncated")),
    "png of another size": (lambda out, tile: Image.new("RGB", (512, 500)).save(out / f"{tile}_m.png"),
                            lambda tile: (f"{tile}.jpg", f"{tile}_m.png", "sizes differ")),
    "missing jpeg": (lambda out, tile: (out / f"{tile}.jpg").unlink(), lambda tile: ("train.txt", tile, "no tile")),
}


@pytest.mark.parametrize("damage", list(TILES_DAMAGE))
def test_damaged_tiles_are_one_line_exit_2(damage, landcoverai_tiles, tmp_path, capsys):
    root = damaged_copy(landcoverai_tiles, tmp_path)
    tile = read_split_ids(root)["train"][-1]
    make_damage, expected = TILES_DAMAGE[damage]
    make_damage(root / "output", tile)
    assert_one_line_error(capsys, main(prepare_command(root, tmp_path / "cache")), *expected(tile))
    assert not any((folder / MANIFEST).exists() for folder in cache_folders(tmp_path / "cache"))


@pytest.mark.parametrize("args, message", [
    (["--root", "/nonexistent/landcover"], "/nonexistent/landcover: LandCover.ai folder not found"),
    (["--root", ".", "--size", "1024"], "size must be an integer from 32 to 512"),
    (["--root", ".", "--layout", "zip"], "layout must be one of auto, archive, tiles"),
])
def test_bad_prepare_arguments(args, message, capsys, tmp_path):
    assert_one_line_error(capsys, main(["prepare", "landcoverai", *args, "--cache-dir", str(tmp_path)]), message)


def test_a_folder_in_neither_layout(tmp_path, capsys):
    for k, split in enumerate(SPLITS):
        (tmp_path / f"{split}.txt").write_text(f"M-33-20-D-c-4-2_{k}\n")
    assert_one_line_error(capsys, main(prepare_command(tmp_path, tmp_path / "cache")), str(tmp_path),
                          "neither the archive's layout")


def test_prepare_command_reports_counts_and_size(landcoverai_archive, tmp_path, capsys):
    assert main(prepare_command(landcoverai_archive[0], tmp_path / "cache")) == 0
    out = capsys.readouterr().out
    counts = {split: len(ids) for split, ids in read_split_ids(landcoverai_archive[0]).items()}
    assert f"{counts['train']} train, {counts['val']} val, {counts['test']} test tiles" in out
    assert "MB" in out and str(tmp_path / "cache") in out.replace("\n", "")


def test_seed_grid_runs_end_to_end_on_the_fixture(landcoverai_archive, tmp_path):
    """tasks/seed.toml as shipped (the reference's models, losses, maskers and recipe), on 64-pixel tiles for one
    epoch: every cell trains, is tested, and reaches the leaderboard beside the published table."""
    out, leaderboard = tmp_path / "runs", tmp_path / "leaderboard.md"
    code = main(["run", "--grid", "seed", "--data-root", str(landcoverai_archive[0]), "--set", "dataset.size=64",
                 "--set", "recipe.epochs=1", "--out", str(out), "--leaderboard", str(leaderboard)])
    assert code == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        rows = [(json.loads(config), json.loads(metrics))
                for config, metrics in db.execute("SELECT config, metrics FROM cells WHERE status = 'done'")]
    assert sorted((c["arch"]["name"], c["fraction"]) for c, _ in rows) == [
        ("reference-unet", 0.1), ("reference-unet", 0.15), ("reference-unetplusplus", 0.1),
        ("reference-unetplusplus", 0.15)]
    for config, metrics in rows:
        assert config["recipe"]["lr"] == 1e-5 and config["recipe"]["class_weights"] == [0.66, 1.27, 1.12, 1.03, 1.91]
        assert config["recipe"]["amp"] == "fp16" and config["recipe"]["augment"] == ["hflip", "vflip", "rot90_half"]
        assert config["dataset"]["kwargs"] == {"size": 64, "resize": "bilinear", "normalization": "imagenet"}
        assert config["masker"]["name"] == "reference_pixels"
        assert metrics["test_tiles"] == len(read_split_ids(landcoverai_archive[0])["test"])
        assert 0 <= metrics["test_miou"] <= 1 and 0 <= metrics["test_per_batch_miou"] <= 1
    text = leaderboard.read_text()
    assert "landcoverai · grid `seed`" in text and "test mIoU" in text and "0.5054" in text


def test_seed_grid_without_its_data_is_one_line_exit_2(capsys, tmp_path):
    code = main(["run", "--grid", "seed", "--dry-run", "--out", str(tmp_path)])
    assert_one_line_error(capsys, code, "needs the folder of your LandCover.ai copy", "--data-root")


@pytest.mark.parametrize("level, fails", [(logging.ERROR, True), (logging.WARNING, False)])
def test_damage_tifffile_only_logs_fails_the_read_but_metadata_warnings_do_not(level, fails, tmp_path, monkeypatch):
    path = tmp_path / "orthophoto.tif"
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    original = tifffile.TiffPage.asarray

    def logging_asarray(self, *args, **kwargs):
        logging.getLogger("tifffile").log(level, "incorrect StripByteCounts count")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffPage, "asarray", logging_asarray)
    if fails:
        with pytest.raises(UserError, match=f"{path}: cannot read this TIFF.*StripByteCounts"):
            read_tiff(path)
    else:
        assert read_tiff(path).shape == (16, 16, 3)


def test_prepare_grid_makes_the_cache_the_grids_cells_read(landcoverai_tiles, tmp_path, capsys):
    """`bench prepare --grid FILE` prepares the grid's dataset with the grid's own arguments (its --set and --root
    too): the cache a run of that grid opens, and the one `bench prepare DATASET --root ...` names alike."""
    grid = tmp_path / "mine.toml"
    grid.write_text('[dataset]\nname = "landcoverai"\nsize = 32\n\n[axes]\narchs = ["unet"]\nlosses = ["partial_ce"]\n'
                    'maskers = ["full"]\n\n[recipe]\nepochs = 1\n')
    cache_dir = tmp_path / "cache"
    code = main(["prepare", "--grid", str(grid), "--root", str(landcoverai_tiles), "--set", "dataset.size=64",
                 "--set", f"dataset.cache_dir={json.dumps(str(cache_dir))}"])
    out = capsys.readouterr().out
    assert code == 0 and "tiles of 64x64 px" in out, out
    (folder,) = cache_folders(cache_dir)
    assert (folder / MANIFEST).exists()
    assert main(prepare_command(landcoverai_tiles, cache_dir)) == 0  # the same cache: found complete
    assert str(folder) in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["prepare"], "prepare needs a DATASET and --root, or --grid"),
    (["prepare", "landcoverai", "--root", ".", "--set", "dataset.size=64"], "prepare: --set is for --grid"),
    (["prepare", "landcoverai", "--grid", "smoke"], "drop landcoverai (or use --set)"),
    (["prepare", "--grid", "smoke", "--size", "64"], "drop --size (or use --set)"),
    (["prepare", "--grid", "smoke"], "dataset 'synthetic' needs no preparation"),
])
def test_prepare_arguments_that_do_not_go_together(args, message, capsys):
    assert_one_line_error(capsys, main(args), message)
