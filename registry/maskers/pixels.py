"""Pixel-level maskers: every label kept, or a fixed number of i.i.d. random pixels."""

from __future__ import annotations

import torch

from registry import register_masker
from registry.annotation import count_points, count_regions
from registry.errors import UserError
from registry.maskers._common import annotated_indices

UNLABELLED = -1


class FullLabels:
    """Keeps every label: the fully supervised ceiling. The fraction is ignored."""

    uses_fraction = False
    annotation = staticmethod(count_regions)

    def __call__(self, full_mask: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
        return full_mask.to(torch.int64, copy=True)

    def __repr__(self) -> str:
        return "FullLabels()"


class RandomPixels:
    """Keeps exactly ``round(fraction * A)`` pixels, drawn uniformly without replacement among the tile's ``A``
    annotated pixels (``H * W`` when every pixel is annotated; a not-annotated pixel, ``-1``, is never drawn).

    The pixels depend only on the generator, which the harness seeds from the run seed and the tile's index: the same
    pixels are labelled in every epoch and every run.
    """

    uses_fraction = True
    annotation = staticmethod(count_points)  # each pixel is a click of its own

    def check(self, height: int, width: int, fraction: float = 1.0) -> None:
        """A fraction that rounds to no pixel of a tile would train on no label at all: refused."""
        if round(fraction * height * width) == 0:
            raise UserError(f"masker 'random_pixels': {100 * fraction:.4g} % of a {height}x{width} tile is "
                            f"{fraction * height * width:.3g} pixels, which rounds to none: no label to train on "
                            f"(a fraction above {100 * 0.5 / (height * width):.3g} % keeps one; "
                            f"or use points_per_image)")

    def __call__(self, full_mask: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"random_pixels: fraction must be in (0, 1], not {fraction}")
        flat = full_mask.reshape(-1)
        annotated = annotated_indices(flat)
        keep = round(fraction * len(annotated))
        # With every pixel annotated, annotated[p] is p: the draws are the same as drawing among all pixels.
        chosen = annotated[torch.randperm(len(annotated), generator=generator)[:keep]]
        # int64 whatever the input's dtype: -1 in a uint8 mask would become 255, a valid-looking class.
        partial = torch.full(flat.shape, UNLABELLED, dtype=torch.int64, device=flat.device)
        partial[chosen] = flat[chosen].to(torch.int64)
        return partial.reshape(full_mask.shape)

    def __repr__(self) -> str:
        return "RandomPixels()"


FULL_LABELS = "full"  # the masker that keeps every label: the leaderboard's reference for each architecture

register_masker(FULL_LABELS)(FullLabels)
register_masker("random_pixels")(RandomPixels)
