"""What the built-in maskers share: checking their parameters, and turning a set of kept pixels into a partial mask.

Parameters that are wrong whatever the tile (zero, negative, of the wrong type) raise :class:`UserError` when the
masker is built, so that a grid naming them fails while it is read, with its line. Parameters that only a tile size
can refuse (more points than pixels, a block larger than the tile) are refused by the masker's ``check(height,
width, fraction)``, which the harness calls before training (the point, block and scribble maskers also refuse such a
tile when they are handed one).
"""

from __future__ import annotations

import numbers

import cv2
import numpy as np
import torch

from registry.errors import UserError

UNLABELLED = -1


def positive_int(masker: str, name: str, value: object) -> int:
    """``value`` as an int, or a :class:`UserError` naming the masker, the parameter and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UserError(f"masker {masker!r}: {name} must be a positive integer, not {value!r}")
    return int(value)


def non_negative_number(masker: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < float("inf"):
        raise UserError(f"masker {masker!r}: {name} must be a non-negative number, not {value!r}")
    return float(value)


def check_fraction(masker: str, fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"{masker}: fraction must be in (0, 1], not {fraction}")


def labels_of(full_mask: torch.Tensor) -> np.ndarray:
    """The full mask as a C-contiguous int64 NumPy array on the CPU (a uint8 mask is widened first)."""
    if full_mask.dim() != 2:
        raise ValueError(f"a masker takes one mask [H, W], not a tensor of shape {tuple(full_mask.shape)}")
    return np.ascontiguousarray(full_mask.detach().to("cpu", torch.int64).numpy())


def annotated_indices(flat: torch.Tensor) -> torch.Tensor:
    """The flat indices (int64, on the CPU, ascending) of the annotated pixels (``>= 0``) of a flattened mask: all of
    them, ``arange(len(flat))``, when every pixel is, so that a draw among them is a draw among all pixels."""
    flat = flat.detach().to("cpu")
    if not flat.is_signed() or bool((flat >= 0).all()):
        return torch.arange(flat.numel())
    return torch.nonzero(flat >= 0).reshape(-1)


def keep(full_mask: torch.Tensor, kept: np.ndarray) -> torch.Tensor:
    """The partial mask: ``full_mask`` where ``kept`` (bool ``[H, W]``) is true, ``-1`` elsewhere; int64 whatever
    the input's dtype (``-1`` in a uint8 mask would become 255, a valid-looking class), on the input's device."""
    labels = labels_of(full_mask)
    partial = np.where(kept, labels, UNLABELLED)
    return torch.from_numpy(partial).to(full_mask.device)


def keep_flat(full_mask: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """The partial mask keeping the pixels at flat indices ``chosen`` (a CPU int64 tensor)."""
    flat = full_mask.reshape(-1)
    partial = torch.full(flat.shape, UNLABELLED, dtype=torch.int64, device=flat.device)
    chosen = chosen.to(flat.device)
    partial[chosen] = flat[chosen].to(torch.int64)
    return partial.reshape(full_mask.shape)


def depth(inside: np.ndarray) -> np.ndarray:
    """float64 ``[H, W]``: the Euclidean distance between each pixel's centre and the nearest pixel outside
    ``inside`` (bool ``[H, W]``), exact; 0 outside, 1 for a pixel that touches the outside by an edge. The tile's
    edge is no boundary (a region goes on beyond it): with nothing outside, every distance is infinite.

    The distances are the square roots of whole numbers. cv2's float32 results can differ in their last bit from
    one process to the next (its vectorised and scalar paths round differently, and which one runs depends on the
    memory's alignment), which would change which pixel is deepest and break the same-seed-same-mask promise: they
    are rounded to the whole squared distance first.
    """
    found = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(np.float64)
    squared = np.rint(found * found)
    squared[found > 1e18] = np.inf  # cv2's "nothing outside"
    return np.sqrt(squared)
