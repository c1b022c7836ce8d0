"""The tile cache's writer: tiles land where the plan says, whether they come as whole arrays or cut out of a wider
window, and the manifest's SHA-256 of every array file is the file's, however the tiles were written (in order from
nothing, out of order, rewritten, or resumed by a second writer)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from registry.datasets.tile_cache import CachePlan, TileCache, TileCacheWriter

TILE, CHANNELS = 8, 4


def plan(count: int = 6, image_dtype: str = "uint16") -> CachePlan:
    return CachePlan({"train": [f"t{i}" for i in range(count)], "val": ["v0", "v1"]}, TILE, CHANNELS,
                     {"dataset": "test"}, image_dtype=image_dtype, mask_dtype="int8")


def tiles(split: str, count: int, dtype: str = "uint16") -> tuple[np.ndarray, np.ndarray]:
    """Distinct tiles, as views of one wide window (so not contiguous), and their masks."""
    rng = np.random.default_rng(len(split) + count)
    window = rng.integers(0, 1000, (TILE, TILE * count, CHANNELS)).astype(dtype)
    masks = rng.integers(-1, 5, (TILE, TILE * count)).astype(np.int8)
    return window, masks


def write_all(writer: TileCacheWriter, the_plan: CachePlan, order: dict[str, list[int]], unit: str = "all") -> None:
    """Write the tiles of ``order`` (by default every tile, in order) as one unit."""
    count = 0
    for split, ids in the_plan.ids.items():
        window, masks = tiles(split, len(ids), the_plan.image_dtype)
        for index in order.get(split, range(len(ids))):
            writer.write(split, index, window[:, index * TILE:(index + 1) * TILE],
                         np.ascontiguousarray(masks[:, index * TILE:(index + 1) * TILE]))
            count += 1
    writer.unit_done(unit, "fingerprint", count, {})


def check(cache: TileCache, the_plan: CachePlan) -> None:
    for name, recorded in cache.manifest["arrays"].items():
        assert recorded["sha256"] == hashlib.sha256((cache.folder / name).read_bytes()).hexdigest(), name
    for split, ids in the_plan.ids.items():
        window, masks = tiles(split, len(ids), the_plan.image_dtype)
        images, stored_masks = cache.split(split)
        expected = window.reshape(TILE, len(ids), TILE, CHANNELS).transpose(1, 0, 2, 3)
        assert np.array_equal(images, expected)
        assert np.array_equal(stored_masks, masks.reshape(TILE, len(ids), TILE).transpose(1, 0, 2))


@pytest.mark.parametrize("image_dtype", ["uint8", "uint16", "float32"])
def test_tiles_written_in_order_from_nothing(tmp_path, image_dtype, monkeypatch):
    """The digests come from the bytes as they were written: the files are not read again."""
    the_plan = plan(image_dtype=image_dtype)
    monkeypatch.setattr("registry.datasets.tile_cache._sha256", lambda path: pytest.fail(f"{path} read again"))
    with TileCacheWriter(tmp_path, the_plan) as writer:
        write_all(writer, the_plan, {})
        cache = writer.finish(["all"], {})
    check(cache, the_plan)


def test_tiles_written_out_of_order_or_twice(tmp_path):
    the_plan = plan()
    with TileCacheWriter(tmp_path, the_plan) as writer:
        write_all(writer, the_plan, {"train": [0, 2, 1, 3, 4, 5], "val": [0, 1]})
        writer.write("val", 1, *(np.ascontiguousarray(a[:, TILE:2 * TILE]) for a in tiles("val", 2)))  # again
        cache = writer.finish(["all"], {})
    check(cache, the_plan)


def test_a_second_writer_resumes_and_the_digests_are_the_files(tmp_path):
    the_plan = plan()
    with TileCacheWriter(tmp_path, the_plan) as writer:  # a preparation cut short after its first unit
        write_all(writer, the_plan, {"train": [0, 1], "val": []}, unit="first")
    with TileCacheWriter(tmp_path, the_plan) as writer:  # the arrays exist: this writer does not start over
        assert not writer.needs("first", "fingerprint")
        write_all(writer, the_plan, {"train": [2, 3, 4, 5]}, unit="rest")
        cache = writer.finish(["first", "rest"], {})
    check(cache, the_plan)


def test_tiles_wider_than_one_pwritev(tmp_path, monkeypatch):
    """A tile with more rows than one pwritev takes is written in several."""
    monkeypatch.setattr("registry.datasets.tile_cache.IOV_MAX", 3)
    the_plan = plan()
    with TileCacheWriter(tmp_path, the_plan) as writer:
        write_all(writer, the_plan, {})
        cache = writer.finish(["all"], {})
    check(cache, the_plan)
