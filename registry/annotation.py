"""The annotation cost model: what a person does to produce a masker's labels, counted from the partial masks, and
what it costs in seconds.

Every masker has an ``annotation`` counter: ``counter(partial[H, W]) -> {unit: count}``, where ``partial`` is the
tile's partial mask (an integer NumPy array, ``-1`` unlabelled) and the units are the actions of an annotator
(:data:`UNITS`: clicks, scribbles and their length, outlined regions, densely labelled pixels, blocks). A counter gives
the same units for every tile, zero or not. The harness adds the tiles themselves (``tile``), totals the counts over
the training split, and prices them with a table of seconds per unit (:data:`PUBLISHED_COSTS`, which a grid's
``[annotation_cost]`` overrides): the cell's annotator hours, per 1000 tiles so that grids of different sizes compare.
Cost is derived from the masks and never part of a cell's identity: a new table re-prices stored cells without
retraining them.

docs/annotation-cost.md gives the source of every default and how it was scaled to a tile.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping

import cv2
import numpy as np

Counts = dict[str, float]
Counter = Callable[[np.ndarray], Counts]

# Seconds per unit (docs/annotation-cost.md: where each comes from). Bearman et al. 2016 ("What's the point"),
# measured on PASCAL VOC 2012: a click on an object of a class, 2.4 s; a squiggle, 10.9 s (their 34.9 s per image with
# squiggles, less the 18.5 s of saying which classes are absent, over the 1.5 classes an image has); the outline of an
# object as a polygon, 79 s (the figure for COCO, Lin et al. 2014, by which their 239.7 s per fully labelled image is
# 18.5 s + 2.8 objects x 79 s). Zero where no measured figure exists; a grid sets its own.
PUBLISHED_COSTS: dict[str, float] = {
    "point": 2.4,  # one clicked pixel and its class
    "stroke": 10.9,  # one scribble
    "stroke_pixel": 0.0,  # per pixel of a scribble's length
    "region": 79.0,  # outlining one region (a connected piece of one class) in dense annotation
    "dense_pixel": 0.0,  # per densely labelled pixel: the area-based alternative to "region"
    "block": 0.0,  # per block labelled in full, on top of its regions (the switch from one block to the next)
    "tile": 0.0,  # per tile an annotator opens, whatever the style
}
UNITS = tuple(PUBLISHED_COSTS)


def _is_amount(value: object) -> bool:
    """A count or a number of seconds: a real number, 0 or more, finite (a bool is no number here)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and 0 <= value < math.inf


def _class_masks(partial: np.ndarray) -> Iterator[np.ndarray]:
    """uint8 ``[H, W]``, 1 on the labelled pixels of each class of ``partial`` in turn."""
    for value in np.unique(partial):
        if value >= 0:
            yield (partial == value).astype(np.uint8)


def count_points(partial: np.ndarray) -> Counts:
    """Every labelled pixel is a click (random pixels, points)."""
    return {"point": int(np.count_nonzero(partial >= 0))}


def count_regions(partial: np.ndarray) -> Counts:
    """Dense annotation: each connected piece of one class is a region outlined, each of its pixels labelled."""
    regions = sum(cv2.connectedComponents(inside, connectivity=8)[0] - 1 for inside in _class_masks(partial))
    return {"region": regions, "dense_pixel": int(np.count_nonzero(partial >= 0))}


def count_strokes(partial: np.ndarray) -> Counts:
    """Scribbles: each connected piece of one class is a stroke (strokes that touch count as one), as long as its
    area over the side of the widest square brush that fits inside it (exact for a straight stroke along a row or a
    column; a diagonal one comes out up to twice its centre line's pixel count)."""
    strokes, length = 0, 0.0
    for inside in _class_masks(partial):
        count, components, stats, _ = cv2.connectedComponentsWithStats(inside, connectivity=8)
        for index in range(1, count):
            left, top, width, height, area = stats[index]
            piece = (components[top:top + height, left:left + width] == index).astype(np.uint8)  # its box only
            brush = 1
            while brush < min(width, height) and cv2.erode(piece, np.ones((brush + 1, brush + 1), np.uint8),
                                                           borderType=cv2.BORDER_CONSTANT, borderValue=0).any():
                brush += 1
            length += int(area) / brush
        strokes += count - 1
    return {"stroke": strokes, "stroke_pixel": length}


def block_counter(size: int) -> Counter:
    """Blocks of ``size`` x ``size`` labelled in full: the regions within them (each piece of a region that a block
    holds is outlined on its own), and about as many blocks as the labelled pixels fill (overlapping blocks, or
    blocks over not-annotated pixels, make that an underestimate)."""

    def count_blocks(partial: np.ndarray) -> Counts:
        counts = count_regions(partial)
        return {"block": math.ceil(counts["dense_pixel"] / (size * size)), **counts}

    return count_blocks


class CostError(ValueError):
    """A table of seconds per unit that cannot be used; ``unit`` names the entry at fault, when one is."""

    def __init__(self, message: str, unit: str | None = None):
        super().__init__(message)
        self.unit = unit


def check_costs(table: object, counted: Mapping[str, str] | None = None) -> dict[str, float]:
    """The seconds per unit a grid's ``[annotation_cost]`` table gives, over :data:`PUBLISHED_COSTS`. ``counted`` maps
    the units that the grid's maskers count beyond :data:`UNITS` to the masker that counts each: a table must price
    them. Raises a one-line error (the caller adds where the table stands) for a table that is not one, an
    unknown unit, or a cost that is negative, infinite or not a number (:class:`CostError`)."""
    if not isinstance(table, dict):
        raise CostError(f"[annotation_cost] must be a table of seconds per unit ({', '.join(UNITS)}), not {table!r}")
    counted = counted or {}
    known = (*UNITS, *counted)
    for unit, seconds in table.items():
        if unit not in known:
            raise CostError(f"[annotation_cost] has no unit {unit!r}; the units are {', '.join(known)}", unit)
        if not _is_amount(seconds):
            raise CostError(f"[annotation_cost] {unit} must be a number of seconds, 0 or more, not {seconds!r}", unit)
    for unit, masker in counted.items():
        if unit not in table:
            raise CostError(f"masker {masker!r} counts {unit!r}, which has no cost: give its seconds in "
                            "[annotation_cost]")
    return {**PUBLISHED_COSTS, **{unit: float(seconds) for unit, seconds in table.items()}}


def units_of(counter: Counter) -> tuple[str, ...]:
    """The units a counter counts, asked of a tile with no label."""
    return tuple(counter(np.full((1, 1), -1, dtype=np.int64)))


def tally(counter: Counter, masks: np.ndarray) -> Counts:
    """The counts over partial masks ``[N, H, W]``, with ``tile``: N. Raises ValueError for a count that is negative
    or not finite."""
    totals: Counts = {"tile": len(masks)}
    for partial in masks:
        for unit, count in counter(np.asarray(partial)).items():
            if not _is_amount(count):
                raise ValueError(f"the annotation counter {counter!r} gave {unit} = {count!r}, not a count")
            totals[unit] = totals.get(unit, 0) + count
    return totals


def priced(counts: Counts, costs: Mapping[str, float]) -> dict:
    """What the store keeps of a cell's annotation: its counts, the seconds per unit they were priced at, and the
    annotator hours per 1000 tiles."""
    seconds = sum(count * costs[unit] for unit, count in counts.items())
    tiles = counts.get("tile") or 1
    return {"counts": dict(counts), "seconds_per_unit": dict(costs),
            "hours_per_1000_tiles": seconds / tiles * 1000 / 3600}
