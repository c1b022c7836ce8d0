"""Region maskers: square blocks labelled in full, or every label but a band along the class boundaries."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from registry import register_masker
from registry.annotation import block_counter, count_regions
from registry.errors import UserError
from registry.maskers._common import check_fraction, keep, labels_of, positive_int

OFFSET_CHUNK = 64  # block offsets are drawn from the generator this many at a time


class Blocks:
    """Keeps square blocks of ``size`` x ``size`` pixels in full, placed at random until they cover about
    ``fraction`` of the tile's annotated pixels (an annotator who labels a few windows of each image completely).

    Not-annotated pixels (``-1``) stay unlabelled under a block and do not count in its coverage. Each block covers
    an annotated pixel not yet labelled, taken in a random order of the tile's pixels, at a random place within the
    block (shifted to lie inside the tile: every block is a whole square). Blocks may overlap. They are added while
    the coverage is below ``fraction * A`` (``A`` the tile's annotated pixels, ``H * W`` when all are); the last one
    is kept only if it brings the coverage nearer to that target, and there is always at least one (none in a tile
    with no annotated pixel). So the coverage is within ``size**2 / 2`` pixels of the target, or is a single block
    when the target is smaller than one; ``fraction = 1.0`` labels every annotated pixel.

    A block larger than the tile cannot be placed: :meth:`check` refuses it before training.
    """

    uses_fraction = True

    def __init__(self, size: int = 16):
        self.size = positive_int("blocks", "size", size)
        self.annotation = block_counter(self.size)

    def check(self, height: int, width: int, fraction: float = 1.0) -> None:
        if self.size > min(height, width):
            raise UserError(f"masker 'blocks': size {self.size} is larger than a {height}x{width} tile")

    def __call__(self, full_mask: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
        check_fraction("blocks", fraction)
        height, width = full_mask.shape
        self.check(height, width)
        annotated = labels_of(full_mask) >= 0
        size = self.size
        # the target as it always was when every pixel is annotated: the same float, so the same blocks
        target = fraction * height * width if annotated.all() else fraction * int(np.count_nonzero(annotated))
        order = torch.randperm(height * width, generator=generator).numpy()
        # A not-annotated pixel counts as covered from the start: no block is placed for it, nor counts it, and
        # keep() leaves it -1 whatever covers it.
        covered = ~annotated
        covered_flat = covered.reshape(-1)  # a view
        count = blocks = cursor = 0
        offsets: list[list[int]] = []
        while count < target:
            while covered_flat[order[cursor]]:  # the next annotated pixel, in the random order, no block covers
                cursor += 1
            if not offsets:
                offsets = torch.randint(0, size, (OFFSET_CHUNK, 2), generator=generator).tolist()[::-1]
            dy, dx = offsets.pop()
            row, column = divmod(int(order[cursor]), width)
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
    a band about ``width`` pixels deep on each side of every boundary goes. The tile's edge is no boundary, nor is
    the edge of a not-annotated area (``-1``: no class, whose own pixels stay unlabelled). A region thinner than
    ``2 * width + 1`` pixels may lose all its labels.

    ``fraction`` is ignored: what is kept is set by ``width`` and the boundaries. A width that reaches from corner to
    corner of the tile would leave no label in any tile with two classes: :meth:`check` refuses it before training.
    """

    uses_fraction = False
    annotation = staticmethod(count_regions)  # the tile labelled in full, its boundaries left out after

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
        if labels.min(initial=0) < 0:  # not-annotated pixels: left out of both the disc's maximum and its minimum
            return keep(full_mask, self._kept_around_unannotated(labels))
        if labels.max(initial=0) < 256:  # class indices: cv2 takes them as they are
            ranks = labels.astype(np.uint8)
        else:  # ranks of the labels fit cv2's morphology dtypes whatever the class indices are (a sort: slower)
            values, ranks = np.unique(labels, return_inverse=True)
            dtype = np.uint8 if len(values) <= 256 else np.uint16 if len(values) <= 65536 else np.float32
            ranks = ranks.reshape(labels.shape).astype(dtype)
        # A pixel keeps its label when the disc around it holds one class only: its maximum equals its minimum.
        # cv2's default border leaves pixels beyond the tile out of both.
        kept = cv2.dilate(ranks, self._disc) == cv2.erode(ranks, self._disc)
        return keep(full_mask, kept)

    def _kept_around_unannotated(self, labels: np.ndarray) -> np.ndarray:
        """Which pixels of ``labels`` (int64, with ``-1`` somewhere) keep their label: those whose disc holds one
        class, not counting its not-annotated pixels. Classes are ranked from 1; a not-annotated pixel is 0 in the
        image the disc's maximum is taken of and above every rank in the one its minimum is taken of, so it changes
        neither; a disc of not-annotated pixels only has maximum 0 below its minimum and keeps nothing."""
        annotated = labels >= 0
        values = np.unique(labels[annotated])
        ranks = np.searchsorted(values, labels) + 1
        top = len(values) + 1
        dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.float32
        low = np.where(annotated, ranks, 0).astype(dtype)
        high = np.where(annotated, ranks, top).astype(dtype)
        return annotated & (cv2.dilate(low, self._disc) == cv2.erode(high, self._disc))

    def __repr__(self) -> str:
        return f"Eroded(width={self.width})"


register_masker("blocks", test_kwargs={"size": 4})(Blocks)
register_masker("eroded", test_kwargs={"width": 1})(Eroded)
