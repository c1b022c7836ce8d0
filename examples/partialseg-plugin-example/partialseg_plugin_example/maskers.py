"""``center_points``: a few labelled pixels at the centre of each class's largest region.

This module registers its masker with the decorator when it is imported; the ``partialseg.maskers`` entry point names
the module, so the harness imports it the first time a grid (or ``bench list``) asks for ``center_points``.
"""

from __future__ import annotations

import numbers

import cv2
import numpy as np
import torch

from registry import UserError, register_masker

UNLABELLED = -1


class CenterPoints:
    """For every class in the tile: its largest 4-connected region, the pixel of that region nearest to the region's
    centroid (ties go to the first in row-major order), and the pixels of the same region within ``radius`` of it
    (a (2 radius + 1)-wide square). Everything else is ``-1``.

    The result depends on the mask alone: the fraction and the generator are not used (``uses_fraction`` is false,
    so a grid runs this masker once, at fraction 1.0)."""

    uses_fraction = False

    def __init__(self, radius: int = 1):
        if isinstance(radius, bool) or not isinstance(radius, numbers.Integral) or radius < 0:
            raise UserError(f"masker 'center_points': radius must be a non-negative integer, not {radius!r}")
        self.radius = int(radius)

    @staticmethod
    def annotation(partial: np.ndarray) -> dict[str, int]:
        """What an annotator does for it (registry.annotation prices it): one click per class, at its square's
        centre (the square follows from the click)."""
        return {"point": len(np.unique(partial[partial >= 0]))}

    def __call__(self, full_mask: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
        if full_mask.dim() != 2:
            raise ValueError(f"a masker takes one mask [H, W], not a tensor of shape {tuple(full_mask.shape)}")
        labels = np.ascontiguousarray(full_mask.detach().to("cpu", torch.int64).numpy())
        height, width = labels.shape
        kept = np.zeros(labels.shape, dtype=bool)
        for cls in np.unique(labels):
            count, components = cv2.connectedComponents((labels == cls).astype(np.uint8), connectivity=4)
            sizes = np.bincount(components.ravel(), minlength=count)[1:]  # component 0 is the background
            region = components == 1 + int(np.argmax(sizes))
            rows, cols = np.nonzero(region)  # row-major order
            nearest = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
            row, col = int(rows[nearest]), int(cols[nearest])
            top, left = max(row - self.radius, 0), max(col - self.radius, 0)
            bottom, right = min(row + self.radius + 1, height), min(col + self.radius + 1, width)
            kept[top:bottom, left:right] |= region[top:bottom, left:right]
        partial = np.where(kept, labels, UNLABELLED)
        return torch.from_numpy(partial).to(full_mask.device)


@register_masker("center_points", source="plugin partialseg-plugin-example", test_kwargs={"radius": 1})
def center_points(radius: int = 1) -> CenterPoints:
    return CenterPoints(radius)
