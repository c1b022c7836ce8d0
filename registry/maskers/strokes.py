"""Scribbles: thin strokes drawn inside the regions of a tile, never across a boundary."""

from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np
import torch

from registry import register_masker
from registry.annotation import count_strokes
from registry.errors import UserError
from registry.maskers._common import depth, keep, labels_of, positive_int

HEADING_NOISE = 0.1  # radians per step: a hand's smooth curve, not a random walk's knots
START_NOISE = 0.35  # radians: how far a stroke's direction strays from its region's main axis
TURNS = tuple(math.radians(a) * s for a in range(0, 91, 15) for s in ((1,) if a == 0 else (1, -1)))  # 0, ±15°..±90°


class Stroke(NamedTuple):
    """One scribble: a class, the centre line (int64 ``[N, 2]`` rows and columns in the tile, consecutive pixels
    8-adjacent, none twice) and the side of the square brush drawn along it."""

    value: int
    path: np.ndarray
    brush: int

    def pixels(self, height: int, width: int) -> np.ndarray:
        """bool ``[height, width]``: the pixels the brush covers along the centre line."""
        out = np.zeros((height, width), dtype=bool)
        stamp(out, self.path, self.brush)
        return out


def stamp(out: np.ndarray, path: np.ndarray, brush: int) -> None:
    """Set the pixels of ``out`` that a ``brush`` x ``brush`` square centred on each pixel of ``path`` covers (for an
    even side, the extra row and column lie below and to the right)."""
    low = (brush - 1) // 2
    height, width = out.shape
    for dy in range(-low, brush - low):
        for dx in range(-low, brush - low):
            rows, columns = path[:, 0] + dy, path[:, 1] + dx
            inside = (rows >= 0) & (rows < height) & (columns >= 0) & (columns < width)
            out[rows[inside], columns[inside]] = True


class Scribbles:
    """Keeps thin strokes drawn inside the tile's regions, as an annotator scribbles over each object and patch of
    stuff (ScribbleSup, Lin et al. 2016).

    A region is a connected (8-neighbour) set of pixels of one class (not-annotated pixels, ``-1``, are no class:
    no stroke goes there, and a tile with no annotated pixel gets none). Every region of at least ``min_area`` pixels
    gets ``count`` strokes; a tile where none is that large gets its strokes in its largest region only, so that no
    tile goes unlabelled. A stroke starts at a random pixel near the middle of its region (at least half as deep
    inside as the deepest), heads along the region's main axis give or take a random angle, and bends smoothly both
    ways from there; when it meets the region's edge it turns up to 90 degrees to go on, and stops if it cannot. It is
    about as long as the region's extent along its main axis (the length of a straight band; for a compact region, its
    diameter), shorter where it stops early.

    A stroke is drawn with a square brush of ``width`` pixels whose every pixel stays inside the region, so a stroke
    never crosses into another class or another region. In a region too thin for that brush (a road narrower than
    it, or narrower in places) the stroke is drawn with the widest brush that can still travel along the region (the
    pixels where it fits, in one connected piece, span at least half the region's box), down to one pixel: a line
    along the region. :meth:`strokes` returns the strokes one by one.

    ``fraction`` is ignored (as in scribble-supervised benchmarks, the annotation is set by the protocol, not by a
    pixel budget): the share of pixels labelled follows from the tile's regions, and the leaderboard's "labelled %"
    reports it. Make scribbles sparser or denser with ``width`` and ``count``.
    """

    uses_fraction = False
    annotation = staticmethod(count_strokes)

    def __init__(self, count: int = 1, width: int = 3, min_area: int = 16):
        self.count = positive_int("scribbles", "count", count)
        self.width = positive_int("scribbles", "width", width)
        self.min_area = positive_int("scribbles", "min_area", min_area)

    def check(self, height: int, width: int, fraction: float = 1.0) -> None:
        if self.width > min(height, width):
            raise UserError(f"masker 'scribbles': width {self.width} is wider than a {height}x{width} tile")
        if self.min_area > height * width:
            raise UserError(f"masker 'scribbles': min_area {self.min_area} is more than the {height * width} pixels "
                            f"of a {height}x{width} tile")

    def __call__(self, full_mask: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
        labels = labels_of(full_mask)
        kept = np.zeros(labels.shape, dtype=bool)
        for stroke in self.strokes(labels, generator):
            stamp(kept, stroke.path, stroke.brush)
        return keep(full_mask, kept)

    def strokes(self, full_mask: torch.Tensor | np.ndarray, generator: torch.Generator) -> list[Stroke]:
        """The strokes drawn on ``full_mask`` ``[H, W]``: ``count`` per region, regions in the order of their class,
        then of their first pixel."""
        labels = labels_of(torch.as_tensor(full_mask))
        height, width = labels.shape
        self.check(height, width)
        chosen, largest = [], None  # regions as (class, component image, component index, its stats)
        for value in np.unique(labels):
            if value < 0:  # not annotated: no region
                continue
            found, components, stats, _ = cv2.connectedComponentsWithStats((labels == value).astype(np.uint8),
                                                                           connectivity=8)
            areas = stats[1:found, cv2.CC_STAT_AREA]
            large = (np.flatnonzero(areas >= self.min_area) + 1).tolist()
            chosen.extend((int(value), components, index, stats[index])
                          for index in sorted(large, key=lambda i: _first_pixel(components, i, stats)))
            top = _largest(components, stats)
            if largest is None or stats[top, cv2.CC_STAT_AREA] > largest[3][cv2.CC_STAT_AREA]:
                largest = (int(value), components, top, stats[top])
        if not chosen:  # no region is large enough: the first of the largest (none when nothing is annotated)
            chosen = [largest] if largest is not None else []
        strokes = []
        pad = self.width
        for value, components, index, (left, top, box_width, box_height, _) in chosen:
            # The region's box with a margin wide enough that a brush inside the region never reaches beyond it.
            y0, x0 = max(top - pad, 0), max(left - pad, 0)
            y1, x1 = min(top + box_height + pad, height), min(left + box_width + pad, width)
            inside = components[y0:y1, x0:x1] == index
            allowed, brush = _brush_centres(inside, self.width, max(box_width, box_height))
            for _ in range(self.count):
                path = _draw(inside, allowed, generator) + (y0, x0)
                strokes.append(Stroke(value, path, brush))
        return strokes

    def __repr__(self) -> str:
        return f"Scribbles(count={self.count}, width={self.width}, min_area={self.min_area})"


def _first_pixel(components: np.ndarray, index: int, stats: np.ndarray) -> tuple[int, int]:
    """The first pixel, in raster order, of component ``index`` of cv2's ``components`` (whose numbering may change
    with its algorithm and threads: the order of the regions, hence which strokes the generator's draws go to, must
    depend on the regions only)."""
    top, left, width = (int(stats[index, key]) for key in (cv2.CC_STAT_TOP, cv2.CC_STAT_LEFT, cv2.CC_STAT_WIDTH))
    return top, left + int(np.argmax(components[top, left:left + width] == index))


def _largest(components: np.ndarray, stats: np.ndarray) -> int:
    """The index of the largest component (not the background, 0), the first in raster order of equals."""
    areas = stats[1:, cv2.CC_STAT_AREA]
    tied = (np.flatnonzero(areas == areas.max()) + 1).tolist()
    return min(tied, key=lambda i: _first_pixel(components, i, stats))


def _brush_centres(inside: np.ndarray, width: int, span: int) -> tuple[np.ndarray, int]:
    """Where a stroke's centre line may go, and the brush: the pixels where a square brush lies wholly inside the
    region (pixels beyond the array's edge count as inside: the array's edge is the tile's or lies far from the
    region), in their largest connected part, for the widest brush up to ``width`` whose part spans at least half the
    region's ``span`` (the longer side of its box); else the region itself and a one-pixel brush."""
    region = inside.astype(np.uint8)
    for brush in range(width, 1, -1):
        low = (brush - 1) // 2
        allowed = cv2.erode(region, np.ones((brush, brush), np.uint8), anchor=(low, low))
        found, parts, stats, _ = cv2.connectedComponentsWithStats(allowed, connectivity=8)
        if found < 2:
            continue
        largest = _largest(parts, stats)
        if 2 * max(stats[largest, cv2.CC_STAT_WIDTH], stats[largest, cv2.CC_STAT_HEIGHT]) >= span:
            return parts == largest, brush
    return inside, 1


def _draw(inside: np.ndarray, allowed: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """One stroke's centre line in ``allowed`` (bool, non-empty), shaped by the region ``inside``: int64 ``[N, 2]``."""
    # Second moments from exact integer sums: a float sum's last bit may depend on the memory's alignment.
    rows, columns = np.nonzero(inside)
    n, sum_y, sum_x = len(rows), int(rows.sum()), int(columns.sum())
    var_y = (n * int(rows @ rows) - sum_y * sum_y) / (n * n)
    var_x = (n * int(columns @ columns) - sum_x * sum_x) / (n * n)
    cov = (n * int(rows @ columns) - sum_y * sum_x) / (n * n)
    axis = 0.5 * math.atan2(2 * cov, var_x - var_y)  # the main axis's angle from the columns' direction
    spread = (var_x + var_y) / 2 + math.sqrt(((var_x - var_y) / 2) ** 2 + cov * cov)
    steps = max(1, round(math.sqrt(12 * spread) / 2))  # each way from the start

    deep = depth(allowed)
    candidates = np.flatnonzero(allowed & (deep >= deep[allowed].max() / 2))
    pick = int(torch.randint(len(candidates), (1,), generator=generator))
    noise = torch.randn(2 * steps + 1, generator=generator, dtype=torch.float64).tolist()
    start = divmod(int(candidates[pick]), allowed.shape[1])
    heading = axis + START_NOISE * noise[0]
    visited = {start}
    forward = _walk(allowed, start, heading, noise[1:steps + 1], visited)
    backward = _walk(allowed, start, heading + math.pi, noise[steps + 1:], visited)
    return np.array(backward[::-1] + [start] + forward, dtype=np.int64)


def _walk(allowed: np.ndarray, start: tuple[int, int], heading: float, noise: list[float],
          visited: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """Unit steps from ``start``, the heading bent by ``noise`` at each; the pixels entered, each 8-adjacent to the
    one before (a unit step moves each coordinate's rounding by at most one)."""
    height, width = allowed.shape
    y, x = float(start[0]), float(start[1])
    here = start
    path = []
    for bend in noise:
        heading += HEADING_NOISE * bend
        side = 1.0 if bend >= 0 else -1.0  # turn the way the hand was bending first
        for turn in TURNS:
            angle = heading + side * turn
            ny, nx = y + math.sin(angle), x + math.cos(angle)
            pixel = (math.floor(ny + 0.5), math.floor(nx + 0.5))
            if pixel != here:
                if not (0 <= pixel[0] < height and 0 <= pixel[1] < width) or not allowed[pixel] or pixel in visited:
                    continue
                visited.add(pixel)
                path.append(pixel)
                here = pixel
            heading, y, x = angle, ny, nx
            break
        else:  # boxed in
            break
    return path


register_masker("scribbles", test_kwargs={"count": 1, "width": 2, "min_area": 24})(Scribbles)
