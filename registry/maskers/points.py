"""Point maskers: a fixed number of clicked pixels per tile, or per class present in the tile.

Both ignore the fraction (``uses_fraction`` is false): their budget is a count of points, as in the point-supervision
literature, and the share of pixels it labels follows from the tile size (the leaderboard's "labelled %" reports it).
"""

from __future__ import annotations

import numpy as np
import torch

from registry import register_masker
from registry.annotation import count_points
from registry.errors import UserError
from registry.maskers._common import (
    annotated_indices,
    depth,
    keep,
    keep_flat,
    labels_of,
    non_negative_number,
    positive_int,
)


class PointsPerImage:
    """Keeps exactly ``count`` pixels per tile, drawn uniformly without replacement among its annotated pixels
    (PixelPick, Shin et al. 2021, trains from 10 to 100 pixels per image; without its active selection this is its
    random baseline). A tile with fewer annotated pixels keeps all of them.

    ``fraction`` is ignored: the budget is ``count`` pixels whatever the tile size. A tile with fewer than ``count``
    pixels cannot honour it: :meth:`check` refuses it before training.
    """

    uses_fraction = False
    annotation = staticmethod(count_points)

    def __init__(self, count: int = 20):
        self.count = positive_int("points_per_image", "count", count)

    def check(self, height: int, width: int, fraction: float = 1.0) -> None:
        if self.count > height * width:
            raise UserError(f"masker 'points_per_image': count {self.count} is more than the {height * width} "
                            f"pixels of a {height}x{width} tile")

    def __call__(self, full_mask: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
        height, width = full_mask.shape
        self.check(height, width)
        annotated = annotated_indices(full_mask.reshape(-1))
        # With every pixel annotated, annotated[p] is p: the draws are the same as drawing among all pixels.
        chosen = annotated[torch.randperm(len(annotated), generator=generator)[:self.count]]
        return keep_flat(full_mask, chosen)

    def __repr__(self) -> str:
        return f"PointsPerImage(count={self.count})"


class PointsPerClass:
    """Keeps ``k`` clicked pixels of every class present in the tile, inside its regions rather than on their edges;
    a not-annotated pixel (``-1``) is no class and is never clicked (it counts as another class for the depth).

    A pixel's depth is the Euclidean distance from its centre to the nearest pixel of another class (1 for a pixel
    that touches another class by an edge; the tile's edge is no boundary). For each class, the ``k`` pixels are
    drawn uniformly, without replacement, among its pixels at depth ``min_distance`` or more (in any of its regions,
    so a larger region is likelier to be clicked). When it has fewer such pixels (a class in thin or small regions
    only), all of them are kept and the rest are its deepest other pixels (ties drawn at random), so that clicks sit
    on a thin region's middle line. A class with fewer than ``k`` pixels in the tile keeps all of them.

    ``fraction`` is ignored: the budget is ``k`` points per class present. ``min_distance = 0`` draws among all the
    class's pixels.
    """

    uses_fraction = False
    annotation = staticmethod(count_points)

    def __init__(self, k: int = 1, min_distance: float = 3):
        self.k = positive_int("points_per_class", "k", k)
        self.min_distance = non_negative_number("points_per_class", "min_distance", min_distance)

    def check(self, height: int, width: int, fraction: float = 1.0) -> None:
        if self.k > height * width:
            raise UserError(f"masker 'points_per_class': k {self.k} is more than the {height * width} pixels of a "
                            f"{height}x{width} tile")

    def __call__(self, full_mask: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
        labels = labels_of(full_mask)
        height, width = labels.shape
        self.check(height, width)
        priority = torch.rand(height * width, generator=generator, dtype=torch.float64).numpy()  # random ties
        flat = labels.reshape(-1)
        kept = np.zeros(flat.shape, dtype=bool)
        for value in np.unique(flat):
            if value < 0:  # not annotated
                continue
            inside = labels == value
            members = np.flatnonzero(inside)
            if len(members) <= self.k:
                kept[members] = True
                continue
            deep_of_members = depth(inside).reshape(-1)[members]
            deep = members[deep_of_members >= self.min_distance]
            if len(deep) >= self.k:
                chosen = deep[np.argpartition(priority[deep], self.k - 1)[:self.k]]
            else:  # all the deep pixels, then the deepest others
                chosen = members[np.lexsort((priority[members], -deep_of_members))[:self.k]]
            kept[chosen] = True
        return keep(full_mask, kept.reshape(labels.shape))

    def __repr__(self) -> str:
        return f"PointsPerClass(k={self.k}, min_distance={self.min_distance:g})"


register_masker("points_per_image", test_kwargs={"count": 10})(PointsPerImage)
register_masker("points_per_class", test_kwargs={"k": 2, "min_distance": 2})(PointsPerClass)
