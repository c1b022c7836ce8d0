"""Partial focal loss: the focal loss over the labelled pixels of a partially labelled mask.

Lin, Goyal, Girshick, He and Dollár, "Focal Loss for Dense Object Detection", ICCV 2017 (arXiv:1708.02002).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from registry import register_loss
from registry.losses._common import (
    IGNORE_INDEX,
    check_normalize,
    check_number,
    check_weight,
    mean_over_labelled,
    weight_on,
)


class PartialFocal:
    """Focal loss over labelled pixels (target ``-1`` is ignored): ``-w[y] (1 - p_y)^gamma log p_y`` per pixel, where
    ``p_y`` is the softmax probability of the pixel's label ``y``.

    The factor ``(1 - p_y)^gamma`` down-weights the pixels the model already classifies confidently, so the loss
    dwells on the hard ones; ``gamma = 0`` is cross-entropy, and this loss then equals ``partial_ce`` with the same
    arguments exactly (the same per-pixel values, summed in the same order). The class weights ``weight`` play the
    part of the paper's ``alpha_t`` (one per class here, not one for the foreground); the paper's own multi-class
    form has none. The per-pixel losses are summed and divided as in ``partial_ce``:

    - ``normalize="count"`` (default): by the number of labelled pixels, the reference experiment's formula;
    - ``normalize="weight"``: by the sum of the labelled pixels' class weights, a weighted mean.

    (The paper normalises by the number of anchors assigned to an object; per-pixel here, every labelled pixel is
    one.) ``1 - p_y`` is computed as ``-expm1(-ce)`` from the pixel's cross-entropy, accurate where ``p_y`` is near 1,
    and floored at the smallest normal float so that ``0 < gamma < 1`` has a finite gradient where ``p_y`` rounds to
    1. A batch with no labelled pixel gives a zero that still carries the graph, never NaN. Bad arguments (a negative
    ``gamma``, a class weight that is not a positive number, an unknown ``normalize``) raise
    :class:`registry.errors.UserError` when the loss is built.
    """

    def __init__(self, gamma: float = 2.0, weight: Sequence[float] | torch.Tensor | None = None,
                 normalize: str = "count"):
        self.gamma = check_number("partial_focal", "gamma", gamma, positive=False)
        self.weight = check_weight("partial_focal", weight)
        self.normalize = check_normalize("partial_focal", normalize)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = weight_on("partial_focal", self.weight, logits)
        # -log p_y per pixel in float32, exactly 0 (value and gradient) at ignored pixels: partial_ce's first step.
        ce = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
        one_minus_p = (-torch.expm1(-ce)).clamp_min(torch.finfo(ce.dtype).tiny)
        per_pixel = ce * one_minus_p.pow(self.gamma)  # pow(x, 0) is exactly 1, with a zero gradient
        if weight is not None:
            per_pixel = per_pixel * weight[target.clamp_min(0)]  # ignored pixels are 0 whatever weight they pick up
        return mean_over_labelled(per_pixel, target, weight, self.normalize)

    def __repr__(self) -> str:
        weight = None if self.weight is None else self.weight.tolist()
        return f"PartialFocal(gamma={self.gamma}, weight={weight}, normalize={self.normalize!r})"


register_loss("partial_focal", test_kwargs={"gamma": 2.0})(PartialFocal)
