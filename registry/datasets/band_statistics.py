"""Per-band mean and standard deviation of a dataset's training tiles, gathered unit by unit while a tile cache is
prepared (each unit's sums go into its progress record, so a resumed preparation does not read finished units again).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from registry.errors import UserError


class Statistics:
    """Per-band pixel count, sums and sums of squares of tiles: float64 matrix products (BLAS), kept as exact
    integers for uint8 and uint16 tiles small enough that every partial sum is exact in float64."""

    def __init__(self, bands: int, dtype: np.dtype):
        top = float(np.iinfo(dtype).max) if dtype.kind == "u" else None
        self.exact_pixels = None if top is None else int(2**53 // (top * top))  # per tile
        self.pixels, self.sums, self.squares = 0, [0] * bands, [0] * bands

    def add(self, pixels: np.ndarray) -> None:
        if pixels.size == 0:
            return
        wide = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64)
        sums, squares = np.ones(len(wide)) @ wide, np.diagonal(wide.T @ wide)
        if self.exact_pixels is not None and len(wide) <= self.exact_pixels:
            sums, squares = [int(v) for v in sums], [int(v) for v in squares]
        else:
            sums, squares = [float(v) for v in sums], [float(v) for v in squares]
        self.pixels += len(wide)
        self.sums = [a + b for a, b in zip(self.sums, sums)]
        self.squares = [a + b for a, b in zip(self.squares, squares)]

    def payload(self) -> dict[str, Any]:
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
