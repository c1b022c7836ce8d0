"""The reference experiment's partial labels, draw for draw: ``reference_pixels``.

The reference (sayedgamal99/PyTorch-Implementation-of-UNet-for-Land-Cover-Segmentation-with-Partial-CE-Loss, read
2026-12-01) hides labels on the 512-pixel tile, *before* resizing it: for the tile at position ``index`` of the training
split, ``numpy.random.RandomState(seed + index).permutation(H * W)``, the first ``int(fraction * H * W)`` pixels keep
their label (``int``, not ``round``). albumentations' ``Resize`` then takes the partial mask to the training size with
OpenCV's nearest neighbour, so each output pixel is labelled when the source pixel OpenCV picks for it was.

A harness tile has already been resized when the masker sees it. So the pattern of kept pixels is drawn at
``source_size`` and carried to the tile by that same OpenCV nearest-neighbour map. Where the dataset resized its masks
with that map too (``landcoverai`` with ``resize = "bilinear"``), the result equals the reference's partial mask pixel
for pixel; with another resize it is still a partial copy of the tile, the kept pattern only no longer the reference's.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from registry import register_masker
from registry.annotation import count_points
from registry.errors import UserError
from registry.maskers._common import check_fraction, keep, positive_int


class ReferencePixels:
    """The reference's i.i.d. pixels, drawn at ``source_size`` (the tile's own side when None) from NumPy's
    ``RandomState(seed + index)``; see the module docstring.

    The reference's masks were fully annotated, and its draw is among all the pixels of the source tile: a
    not-annotated pixel (``-1``) it draws stays unlabelled, so the draw keeps about ``fraction`` of the annotated
    pixels (exactly ``int(fraction * pixels)`` of the source tile's), not an exact count of them."""

    uses_fraction = True
    annotation = staticmethod(count_points)
    takes_tile_index = True  # called with the run seed and the tile's index instead of drawing from the generator

    def __init__(self, source_size: int | None = None):
        self.source_size = None if source_size is None else positive_int("reference_pixels", "source_size",
                                                                          source_size)

    def source_shape(self, height: int, width: int) -> tuple[int, int]:
        """The shape the labels are drawn on, for a tile of ``height`` x ``width``."""
        return (self.source_size, self.source_size) if self.source_size else (height, width)

    def check(self, height: int, width: int, fraction: float = 1.0) -> None:
        source = self.source_shape(height, width)
        if int(fraction * source[0] * source[1]) == 0:
            raise UserError(f"masker 'reference_pixels': {100 * fraction:.4g} % of the source tile keeps no pixel "
                            "(int() of the count is 0): no label to train on")

    def __call__(self, full_mask: torch.Tensor, fraction: float, generator: torch.Generator, *, seed: int,
                 index: int) -> torch.Tensor:
        check_fraction("reference_pixels", fraction)
        height, width = full_mask.shape
        source = self.source_shape(height, width)
        pixels = source[0] * source[1]
        kept = np.zeros(pixels, dtype=np.uint8)
        kept[np.random.RandomState(seed + index).permutation(pixels)[:int(fraction * pixels)]] = 1
        kept = kept.reshape(source)
        if source != (height, width):
            kept = cv2.resize(kept, (width, height), interpolation=cv2.INTER_NEAREST)
        return keep(full_mask, kept.astype(bool))

    def __repr__(self) -> str:
        return f"ReferencePixels(source_size={self.source_size})"


register_masker("reference_pixels", test_kwargs={"source_size": 48})(ReferencePixels)
