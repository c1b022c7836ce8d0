"""The tile cache's writer: tiles land where the plan says, whether they come as whole arrays or cut out of a wider
window, by direct I/O or through the page cache, and the manifest's SHA-256 of every array file is the file's, however
the tiles were written (in order from nothing, out of order, rewritten, or resumed by a second writer)."""

from __future__ import annotations

import errno
import hashlib
import os

import numpy as np
import pytest

from registry.datasets import tile_cache
from registry.datasets.tile_cache import DIRECT_ALIGN, CachePlan, TileCache, TileCacheWriter

TILE, CHANNELS = 64, 4  # tiles of whole pages (a 64 x 64 int8 mask is one), which direct I/O can write


def takes_direct_io(folder) -> bool:
    path = folder / ".probe"
    path.touch()
    try:
        os.close(os.open(path, os.O_WRONLY | tile_cache.O_DIRECT))
    except OSError:
        return False
    finally:
        path.unlink()
    return tile_cache.O_DIRECT != 0


@pytest.fixture
def direct_io(tmp_path) -> None:
    if not takes_direct_io(tmp_path):
        pytest.skip(f"{tmp_path}'s file system has no direct I/O")


@pytest.fixture(params=["direct I/O", "page cache"])
def writing(request, monkeypatch) -> None:
    """A test twice: with direct I/O where the file system takes it, and through the page cache alone."""
    if request.param == "page cache":
        monkeypatch.setattr(tile_cache, "O_DIRECT", 0)
    else:
        request.getfixturevalue("direct_io")


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
def test_tiles_written_in_order_from_nothing(writing, tmp_path, image_dtype, monkeypatch):
    """The digests come from the bytes as they were written: the files are not read again."""
    the_plan = plan(image_dtype=image_dtype)
    monkeypatch.setattr("registry.datasets.tile_cache._sha256", lambda path: pytest.fail(f"{path} read again"))
    with TileCacheWriter(tmp_path, the_plan) as writer:
        write_all(writer, the_plan, {})
        cache = writer.finish(["all"], {})
    check(cache, the_plan)


def test_tiles_written_out_of_order_or_twice(writing, tmp_path):
    the_plan = plan()
    with TileCacheWriter(tmp_path, the_plan) as writer:
        write_all(writer, the_plan, {"train": [0, 2, 1, 3, 4, 5], "val": [0, 1]})
        writer.write("val", 1, *(np.ascontiguousarray(a[:, TILE:2 * TILE]) for a in tiles("val", 2)))  # again
        cache = writer.finish(["all"], {})
    check(cache, the_plan)


def test_a_second_writer_resumes_and_the_digests_are_the_files(writing, tmp_path):
    the_plan = plan()
    with TileCacheWriter(tmp_path, the_plan) as writer:  # a preparation cut short after its first unit
        write_all(writer, the_plan, {"train": [0, 1], "val": []}, unit="first")
    with TileCacheWriter(tmp_path, the_plan) as writer:  # the arrays exist: this writer does not start over
        assert not writer.needs("first", "fingerprint")
        write_all(writer, the_plan, {"train": [2, 3, 4, 5]}, unit="rest")
        cache = writer.finish(["first", "rest"], {})
    check(cache, the_plan)


def test_tiles_wider_than_one_pwritev(tmp_path, monkeypatch):
    """Through the page cache, a tile with more rows than one pwritev takes is written in several."""
    monkeypatch.setattr(tile_cache, "O_DIRECT", 0)
    monkeypatch.setattr(tile_cache, "IOV_MAX", 3)
    the_plan = plan()
    with TileCacheWriter(tmp_path, the_plan) as writer:
        write_all(writer, the_plan, {})
        cache = writer.finish(["all"], {})
    check(cache, the_plan)


def test_tiles_of_whole_pages_go_by_direct_io_and_others_through_the_page_cache(direct_io, tmp_path):
    """Images of 64 x 64 x 4 uint16 and masks of 64 x 64 int8 are whole pages, and their data start at a page: both
    go by direct I/O; 24-pixel tiles (9216 and 576 bytes) do not."""
    the_plan = plan()
    with TileCacheWriter(tmp_path / "pages", the_plan) as writer:
        assert all(file.direct and file.offset == DIRECT_ALIGN for file in writer._files.values())
        write_all(writer, the_plan, {})
        cache = writer.finish(["all"], {})
    check(cache, the_plan)
    assert np.load(cache.folder / "train-images.npy", mmap_mode="r").offset == DIRECT_ALIGN
    odd = CachePlan({"train": ["t0"], "val": ["v0"]}, 24, CHANNELS, {"dataset": "test"}, image_dtype="uint16",
                    mask_dtype="int8")
    with TileCacheWriter(tmp_path / "odd", odd) as writer:
        assert not any(file.direct for file in writer._files.values())


def test_a_direct_write_the_device_refuses_goes_through_the_page_cache(direct_io, tmp_path, monkeypatch):
    """An alignment the device does not take (EINVAL at the first write): that tile and the rest of its file go
    through the page cache, and the cache is whole."""
    refused = []

    def pwrite(fd, data, offset):
        refused.append(fd)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(tile_cache.os, "pwrite", pwrite)
    the_plan = plan()
    with TileCacheWriter(tmp_path, the_plan) as writer:
        write_all(writer, the_plan, {})
        assert not any(file.direct for file in writer._files.values())
        cache = writer.finish(["all"], {})
    check(cache, the_plan)
    assert len(refused) == 4  # once for each file: train and val, images and masks


def test_a_file_system_without_direct_io_writes_through_the_page_cache(direct_io, tmp_path, monkeypatch):
    opened = os.open

    def without_direct(path, flags, *args):
        if flags & tile_cache.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return opened(path, flags, *args)

    monkeypatch.setattr(tile_cache.os, "open", without_direct)
    the_plan = plan()
    with TileCacheWriter(tmp_path, the_plan) as writer:
        assert not any(file.direct for file in writer._files.values())
        write_all(writer, the_plan, {})
        cache = writer.finish(["all"], {})
    check(cache, the_plan)
