"""Region maskers: square blocks labelled in full, or every label but a band along the class boundaries."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from registry import register_masker
from registry.errors import UserError
from registry.maskers._common import check_fraction, keep, labels_of, positive_int

OFFSET_CHUNK = 64  # block offsets are drawn from the generator this many at a time


class Blocks:
    """Keeps square blocks of ``size`` x ``size`` pixels in full, placed at random until they cover about
    ``fraction`` of the tile (an annotator who labels a few windows of each image completely).

    Each block covers a pixel not yet labelled, taken in a random order of the tile's pixels, at a random place
    within the block (shifted to lie inside the tile: every block is a whole square). Blocks may overlap. They are
    added while the coverage is below ``fraction * H * W``; the last one is kept only if it brings the coverage
    nearer to that target, and there is always at least one. So the coverage is within ``size**2 / 2`` pixels of the
    target, or is a single block when the target is smaller than one; ``fraction = 1.0`` labels every pixel.

    A block larger than the tile cannot be placed: :meth:`check` refuses it before training.
    """

    uses_fraction = True

    def __init__(self, size: int = 16):
        self.size = positive_int("blocks", "size", size)

    def check(self, height: int, width: int, fraction: float = 1.0) -> None:
        if self.size > min(height, width):
            raise UserError(f"masker 'blocks': size {self.size} is larger than a {height}x{width} tile")

    def __call__(self, full_mask: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
        check_fraction("blocks", fraction)
        height, width = full_mask.shape
        self.check(height, width)
        size, target = self.size, fraction * height * width
        order = torch.randperm(height * width, generator=generator).numpy()
        covered = np.zeros((height, width), dtype=bool)
        covered_flat = covered.reshape(-1)  # a view
        count = blocks = cursor = 0
        offsets: list[list[int]] = []
        while count < target:
            while covered_flat[order[cursor]]:  # the next pixel, in the random order, that no block covers
                cursor += 1
            if not offsets:
                offsets = torch.randint(0, size, (OFFSET_CHUNK, 2), generator=generator).tolist()[::-1]
            row, column = divmod(int(order[cursor]), width)
            dy, dx = offsets.pop()
            top = min(max(row - dy, 0), height - size)
            left = min(max(column - dx, 0), width - size)
            window = covered[top:top + size, left:left + size]
            after = count + size * size - int(np.count_nonzero(window))
            if blocks and after - target > target - count:  # stopping short is nearer the target
                break
            window[...] = True
            count, blocks = after, blocks + 1
        return keep(full_mask, covered)

    def __repr__(self) -> str:
        return f"Blocks(size={self.size})"


class Eroded:
    """Keeps every label except those within ``width`` pixels of a class boundary: the ISPRS Vaihingen/Potsdam
    convention of eroding the boundaries by a disc, to leave the ambiguous pixels along them out.

    A pixel loses its label when the Euclidean distance between its centre and the centre of some pixel of another
    class is at most ``width``: ``width = 1`` removes the pixels that touch another class by an edge, and in general
    a band about ``width`` pixels deep on each side of every boundary goes. The tile's edge is no boundary. A region
    thinner than ``2 * width + 1`` pixels may lose all its labels.

    ``fraction`` is ignored: what is kept is set by ``width`` and the boundaries. A width that reaches from corner to
    corner of the tile would leave no label in any tile with two classes: :meth:`check` refuses it before training.
    """

    uses_fraction = False

    def __init__(self, width: int = 3):
        self.width = positive_int("eroded", "width", width)
        radius = self.width
        dy, dx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
        self._disc = (dy * dy + dx * dx <= radius * radius).astype(np.uint8)

    def check(self, height: int, width: int, fraction: float = 1.0) -> None:
        if self.width >= math.hypot(height - 1, width - 1):
            raise UserError(f"masker 'eroded': width {self.width} reaches across a {height}x{width} tile, so no "
                            f"pixel of a tile with two classes would keep its label")

    def __call__(self, full_mask: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
        labels = labels_of(full_mask)
        if labels.min(initial=0) >= 0 and labels.max(initial=0) < 256:  # class indices: cv2 takes them as they are
            ranks = labels.astype(np.uint8)
        else:  # ranks of the labels fit cv2's morphology dtypes whatever the class indices are (a sort: slower)
            values, ranks = np.unique(labels, return_inverse=True)
            dtype = np.uint8 if len(values) <= 256 else np.uint16 if len(values) <= 65536 else np.float32
            ranks = ranks.reshape(labels.shape).astype(dtype)
        # A pixel keeps its label when the disc around it holds one class only: its maximum equals its minimum.
        # cv2's default border leaves pixels beyond the tile out of both.
        kept = cv2.dilate(ranks, self._disc) == cv2.erode(ranks, self._disc)
        return keep(full_mask, kept)

    def __repr__(self) -> str:
        return f"Eroded(width={self.width})"


register_masker("blocks", test_kwargs={"size": 4})(Blocks)
register_masker("eroded", test_kwargs={"width": 1})(Eroded)
