"""Per-band statistics of training tiles: exact integer sums for uint8 and uint16 (against Python's own integers),
float sums for float32 (against a float64 computation), and means and standard deviations equal to NumPy's over the
same pixels, however many tiles are summed on the summing thread at once."""

from __future__ import annotations

import numpy as np
import pytest

from registry import IMAGE_SCALES
from registry.datasets.band_statistics import CHUNK_PIXELS, PENDING_TILES, Statistics, band_statistics, tile_sums


def exact_sums(pixels: np.ndarray) -> tuple[list[int], list[int]]:
    flat = pixels.reshape(-1, pixels.shape[-1]).astype(object)  # Python integers: no overflow, no rounding
    return [int(v) for v in flat.sum(0)], [int(v) for v in (flat * flat).sum(0)]


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("pixels", [1, CHUNK_PIXELS - 1, CHUNK_PIXELS, 3 * CHUNK_PIXELS + 17])
def test_integer_sums_are_exact(dtype, pixels):
    top = np.iinfo(dtype).max
    values = np.random.default_rng(pixels).integers(top - 3, top + 1, (pixels, 3)).astype(dtype)  # large squares
    sums, squares = tile_sums(values)
    assert (sums, squares) == exact_sums(values)
    assert all(isinstance(v, int) for v in sums + squares)


def test_integer_sums_stay_exact_past_what_one_float64_product_holds():
    """2**53 / 65535**2 is about 2.1 million pixels: a larger uint16 tile of maximal values still sums exactly."""
    values = np.full((2100 * 1100, 1), 65535, np.uint16)
    assert tile_sums(values) == exact_sums(values)


def test_float_sums_match_float64():
    values = np.random.default_rng(1).normal(size=(2 * CHUNK_PIXELS + 5, 4)).astype(np.float32)
    sums, squares = tile_sums(values)
    wide = values.astype(np.float64)
    np.testing.assert_allclose(sums, wide.sum(0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(squares, (wide * wide).sum(0), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_statistics_of_many_tiles_equal_numpys(dtype):
    """More tiles than may wait for the summing thread, each a view of one window and some cut short (edges)."""
    rng = np.random.default_rng(2)
    window = (rng.integers(0, 250, (16, 16 * (3 * PENDING_TILES), 4)) * (200 if dtype == "uint16" else 1))
    window = window.astype(dtype) if dtype != "float32" else (window / 250).astype(np.float32)
    statistics, added = Statistics(4, np.dtype(dtype)), []
    for index in range(3 * PENDING_TILES):
        tile = window[:, index * 16:(index + 1) * 16]
        tile = tile[:11] if index % 5 == 0 else tile  # an edge tile: only its inside is counted
        statistics.add(tile)
        added.append(tile.reshape(-1, 4))
    statistics.add(window[:0])  # nothing inside: counts nothing
    payload = statistics.payload()
    every = np.concatenate(added).astype(np.float64)
    assert payload["pixels"] == len(every)
    mean, std = band_statistics([payload], IMAGE_SCALES[dtype])
    np.testing.assert_allclose(mean, every.mean(0) / IMAGE_SCALES[dtype], atol=1e-6)
    np.testing.assert_allclose(std, every.std(0) / IMAGE_SCALES[dtype], atol=1e-6)
    if dtype != "float32":
        assert (payload["sums"], payload["squares"]) == exact_sums(np.concatenate(added))
