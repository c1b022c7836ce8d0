"""The geometry of predicting a whole scene in windows (``bench predict``): where the windows go, how much each pixel
of a window counts where windows overlap, and the band of rows in which their probabilities are summed until no
later window can add to them.

Everything here is in source pixels, the scene's own grid: a window is ``window`` source pixels square (the training
tile side divided by the dataset's scale), consecutive windows overlap by ``overlap`` pixels, and the scene is
padded on every side by ``margin = overlap // 2`` pixels of its own reflection, so that even its border pixels lie
away from a window's edge, where a model sees least around them. The last window of a row or column is moved back to
end at the padded scene's end rather than reaching past it.

Blending: a window's weight is 1 in its middle and falls as ``sin^2`` over its outer ``overlap`` pixels, so that two
windows at the regular stride weigh ``cos^2 + sin^2 = 1`` wherever they overlap (a partition of unity, in 2-D too,
as a product of the two axes' weights); every pixel's weighted sum is divided by its sum of weights all the same,
which covers the last windows moved back and any overlap. Without overlap every weight is 1: a window's
probabilities are kept exactly as the model gave them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def window_starts(length: int, window: int, stride: int, margin: int) -> list[int]:
    """The first pixel of each window along a side of ``length`` pixels padded by ``margin`` on both ends (negative
    where a window starts in the padding): every ``stride`` pixels, the last one moved back to end at the padding's
    end; one window when the padded side is no longer than a window."""
    padded = length + 2 * margin
    if padded <= window:
        return [-margin]
    starts = list(range(0, padded - window, stride)) + [padded - window]
    return [start - margin for start in starts]


def reflect(indices: np.ndarray, length: int) -> np.ndarray:
    """Pixel indices along a side of ``length`` pixels, those outside it reflected about its first and last pixels
    (without repeating them, as ``numpy.pad(mode="reflect")``), as often as it takes."""
    if length == 1:
        return np.zeros_like(indices)
    period = 2 * (length - 1)
    folded = np.mod(indices, period)
    return np.where(folded >= length, period - folded, folded)


def ramp(window: int, overlap: int) -> np.ndarray:
    """One side's weights ``[window]`` (float64): 1, falling as ``sin^2`` over the outer ``overlap`` pixels."""
    if overlap == 0:
        return np.ones(window)
    edge = np.minimum(np.arange(window), np.arange(window)[::-1]) + 0.5  # each pixel centre's distance to the edge
    return np.sin(0.5 * math.pi * np.minimum(1.0, edge / overlap)) ** 2


def blend_weights(window: int, overlap: int) -> torch.Tensor:
    """A window's weights ``[window, window]`` (float32): the product of the two sides' :func:`ramp`."""
    side = torch.from_numpy(ramp(window, overlap)).float()
    return side[:, None] * side[None, :]


@dataclass(frozen=True)
class Layout:
    """The windows over a scene of ``height`` x ``width`` source pixels."""

    height: int
    width: int
    window: int
    overlap: int

    @property
    def margin(self) -> int:
        return self.overlap // 2

    @property
    def stride(self) -> int:
        return self.window - self.overlap

    def rows(self) -> list[int]:
        return window_starts(self.height, self.window, self.stride, self.margin)

    def columns(self) -> list[int]:
        return window_starts(self.width, self.window, self.stride, self.margin)

    def windows(self) -> list[tuple[int, int]]:
        """``(y, x)`` of every window's top left pixel, row by row."""
        return [(y, x) for y in self.rows() for x in self.columns()]

    def __len__(self) -> int:
        return len(self.rows()) * len(self.columns())


class RowBand:
    """The sums of weighted probabilities (and of weights) over the ``window`` scene rows that the current row of
    windows covers, on the device: the memory a scene takes is one row of windows, whatever its height.

    Windows must be added row by row, as :meth:`Layout.windows` lists them: when the first window of a new row comes,
    every scene row above it is final (no later window reaches it) and :meth:`add` returns those rows' probabilities;
    :meth:`finish` returns the rest."""

    def __init__(self, layout: Layout, num_classes: int, device: torch.device):
        self.layout = layout
        self.top = 0  # the scene row of the band's first row
        self.sums = torch.zeros(num_classes, layout.window, layout.width, device=device)
        self.weights = torch.zeros(layout.window, layout.width, device=device)
        self.weight = blend_weights(layout.window, layout.overlap).to(device)

    def add(self, y: int, x: int, probabilities: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Add one window's probabilities ``[C, window, window]`` at ``(y, x)``; returns ``(first row,
        probabilities [C, rows, width])`` of the rows it made final, if any."""
        top = max(y, 0)
        released = self._release(min(top, self.layout.height) - self.top) if top > self.top else []
        height, width, window = self.layout.height, self.layout.width, self.layout.window
        y0, y1, x0, x1 = max(0, -y), min(window, height - y), max(0, -x), min(window, width - x)
        rows = slice(y + y0 - self.top, y + y1 - self.top)
        columns = slice(x + x0, x + x1)
        weight = self.weight[y0:y1, x0:x1]
        self.sums[:, rows, columns] += probabilities[:, y0:y1, x0:x1] * weight
        self.weights[rows, columns] += weight
        return released

    def finish(self) -> list[tuple[int, torch.Tensor]]:
        """The rows left: the last row of windows' own."""
        return self._release(min(self.layout.height - self.top, self.layout.window))

    def _release(self, count: int) -> list[tuple[int, torch.Tensor]]:
        """The band's first ``count`` rows, divided by their weights; the band moves down by as many rows."""
        if count <= 0:
            return []
        released = [(self.top, self.sums[:, :count] / self.weights[:count])]
        keep = self.layout.window - count
        # clone: the source and target of the move overlap
        self.sums[:, :keep] = self.sums[:, count:].clone()
        self.sums[:, keep:] = 0
        self.weights[:keep] = self.weights[count:].clone()
        self.weights[keep:] = 0
        self.top += count
        return released


def dihedral(images: torch.Tensor, index: int) -> torch.Tensor:
    """The ``index``-th (0..7) of the flips and quarter turns of ``[N, C, H, W]`` square images: ``index % 4``
    quarter turns, after a horizontal flip for ``index >= 4``; 0 is the identity, ``images`` themselves (``rot90``
    by 0 would copy them, to the contiguous layout: two passes over a batch, out of the models' channels-last and
    back)."""
    flipped = images.flip(-1) if index >= 4 else images
    return torch.rot90(flipped, index % 4, dims=(-2, -1)) if index % 4 else flipped


def undo_dihedral(images: torch.Tensor, index: int) -> torch.Tensor:
    """The inverse of :func:`dihedral`: a prediction of the transformed images brought back onto the original (for
    0, ``images`` themselves)."""
    turned = torch.rot90(images, -(index % 4), dims=(-2, -1)) if index % 4 else images
    return turned.flip(-1) if index >= 4 else turned
