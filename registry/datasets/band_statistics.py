"""Per-band mean and standard deviation of a dataset's training tiles, gathered unit by unit while a tile cache is
prepared (each unit's sums go into its progress record, so a resumed preparation does not read finished units again).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from registry.errors import UserError

CHUNK_PIXELS = 32768  # converted to float64 a chunk at a time: a buffer that stays in the CPU's cache
PENDING_TILES = 8  # tiles handed to the summing thread and not yet summed, at most (each keeps its window alive)
_summing: ThreadPoolExecutor | None = None  # one thread for every Statistics: it sums while the caller reads, writes


def _summer() -> ThreadPoolExecutor:
    global _summing
    if _summing is None:
        _summing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="band-statistics")
    return _summing


def tile_sums(pixels: np.ndarray) -> tuple[list[int] | list[float], list[int] | list[float]]:
    """Per-band sum and sum of squares of ``pixels`` ``[..., bands]``: float64 matrix products (BLAS) over chunks of
    ``CHUNK_PIXELS``, whose partial sums of uint8 and uint16 values are integers below 2**53, so exact: those come
    back as ints, float32 pixels' as floats."""
    flat = pixels.reshape(-1, pixels.shape[-1])
    exact = flat.dtype.kind == "u"
    bands = flat.shape[1]
    buffer, ones = np.empty((CHUNK_PIXELS, bands)), np.ones(CHUNK_PIXELS)
    sums: list = [0 if exact else 0.0] * bands
    squares: list = list(sums)
    for start in range(0, len(flat), CHUNK_PIXELS):
        chunk = buffer[:min(CHUNK_PIXELS, len(flat) - start)]
        chunk[...] = flat[start:start + len(chunk)]
        part_sums, part_squares = ones[:len(chunk)] @ chunk, np.diagonal(chunk.T @ chunk)
        cast = int if exact else float
        sums = [a + cast(b) for a, b in zip(sums, part_sums)]
        squares = [a + cast(b) for a, b in zip(squares, part_squares)]
    return sums, squares


class Statistics:
    """Per-band pixel count, sums and sums of squares of tiles (:func:`tile_sums`), summed on a thread of their own
    so that the sums overlap the caller's reading and writing (NumPy and BLAS release the GIL). The caller must not
    change a tile it added; :meth:`payload` waits for every sum."""

    def __init__(self, bands: int, dtype: np.dtype):
        exact = np.dtype(dtype).kind == "u"
        self.pixels, self.sums, self.squares = 0, [0 if exact else 0.0] * bands, [0 if exact else 0.0] * bands
        self._pending: deque[Future] = deque()

    def add(self, pixels: np.ndarray) -> None:
        if pixels.size == 0:
            return
        if len(self._pending) >= PENDING_TILES:
            self._collect(self._pending.popleft())
        self.pixels += pixels.size // pixels.shape[-1]
        self._pending.append(_summer().submit(tile_sums, pixels))

    def _collect(self, future: Future) -> None:
        sums, squares = future.result()
        self.sums = [a + b for a, b in zip(self.sums, sums)]
        self.squares = [a + b for a, b in zip(self.squares, squares)]

    def payload(self) -> dict[str, Any]:
        while self._pending:
            self._collect(self._pending.popleft())
        return {"pixels": self.pixels, "sums": self.sums, "squares": self.squares}


def band_statistics(payloads: list[dict[str, Any]], scale: float) -> tuple[list[float], list[float]]:
    """Mean and standard deviation per band, in units of ``scale``, from the units' sums (exact for integers)."""
    pixels = sum(p["pixels"] for p in payloads)
    if pixels == 0:
        raise UserError("rasters: the training split has no pixel inside its rasters")
    bands = len(payloads[0]["sums"])
    mean, std = [], []
    for band in range(bands):
        total = sum(p["sums"][band] for p in payloads)
        squares = sum(p["squares"][band] for p in payloads)
        if all(isinstance(p["sums"][band], int) for p in payloads):
            variance = (pixels * squares - total * total) / pixels**2  # exact integers until this division
        else:
            variance = squares / pixels - (total / pixels) ** 2
        mean.append(round(total / pixels / scale, 7))
        std.append(round(max(float(np.sqrt(max(variance, 0.0))) / scale, 1e-6), 7))
    return mean, std
