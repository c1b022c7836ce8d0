"""Consistency under flips and rotations (Bortsova, Dubost, Hogeweg, Katramados, de Bruijne, "Semi-supervised Medical
Image Segmentation via Learning Consistency under Transformations", MICCAI 2019; the squared-difference form of
Laine & Aila, "Temporal Ensembling for Semi-Supervised Learning", ICLR 2017)."""

from __future__ import annotations

import random

import torch

from registry import register_regularizer
from registry.regularizers._common import check_rampup, masked_mean, sigmoid_rampup, unlabelled


def dihedral(x: torch.Tensor, element: int) -> torch.Tensor:
    """Element ``0..7`` of the square's symmetry group on the last two axes: ``element % 4`` quarter turns, then a
    left-right flip when ``element >= 4``."""
    x = torch.rot90(x, element % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if element >= 4 else x


class Consistency:
    """Squared difference between the softmax of the model on a flipped or rotated batch and the same flip or
    rotation of its softmax on the batch itself, summed over classes and averaged over the pixels unlabelled in the
    transformed frame, times the sigmoid ramp-up of :mod:`registry.regularizers.entropy` over the first ``rampup``
    share of training.

    The prediction on the untransformed batch is the anchor and carries no gradient (as in UDA and FixMatch): the
    term teaches the model to be equivariant rather than to blur its own prediction. The transformation is one of the
    seven non-identity symmetries of the square, the same for the whole batch, chosen from ``progress`` (so a call is
    deterministic); tiles that are not square only get the three that keep their shape. The model runs a second time
    in training mode (its BatchNorm statistics see the transformed batch too), which costs one more forward and
    backward pass per step. Deep-supervision models are compared on their last output.
    """

    uses_model = True

    def __init__(self, rampup: float = 0.3):
        self.rampup = check_rampup("consistency", rampup)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, images: torch.Tensor, progress: float,
                 model) -> torch.Tensor:
        square = images.shape[-1] == images.shape[-2]
        element = random.Random(float(progress)).choice(range(1, 8) if square else (2, 4, 6))
        outputs = model(dihedral(images, element))
        moved = outputs[-1] if isinstance(outputs, (list, tuple)) else outputs
        probs = torch.softmax(moved.float(), dim=1)
        anchor = dihedral(torch.softmax(logits.detach().float(), dim=1), element)
        per_pixel = ((probs - anchor) ** 2).sum(1)
        return sigmoid_rampup(progress, self.rampup) * masked_mean(per_pixel, unlabelled(dihedral(target, element)))

    def __repr__(self) -> str:
        return f"Consistency(rampup={self.rampup})"


register_regularizer("consistency")(Consistency)
