"""Partial cross-entropy: cross-entropy over the labelled pixels of a partially labelled mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from registry import register_loss
from registry.losses._common import IGNORE_INDEX, check_normalize, check_weight, mean_over_labelled, weight_on


class PartialCrossEntropy:
    """Cross-entropy over labelled pixels (target ``-1`` is ignored), with optional class weights.

    The sum of the (weighted) per-pixel losses is divided by:

    - ``normalize="count"`` (default): the number of labelled pixels, as the reference experiment did, so a class
      weight scales its pixels' share of the loss;
    - ``normalize="weight"``: the sum of the labelled pixels' class weights, PyTorch's convention for
      ``cross_entropy(weight=..., ignore_index=...)``, a weighted mean.

    Without class weights the two agree. A batch with no labelled pixel gives ``0 * logits.sum()``: zero, finite, and
    still part of the graph so that ``backward()`` works (PyTorch's own mean-reduced cross-entropy gives NaN there).
    Bad arguments raise :class:`registry.errors.UserError` when the loss is built.
    """

    def __init__(self, weight: Sequence[float] | torch.Tensor | None = None, normalize: str = "count"):
        self.weight = check_weight("partial_ce", weight)
        self.normalize = check_normalize("partial_ce", normalize)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = weight_on("partial_ce", self.weight, logits)
        # Fused per-pixel loss in float32; ignored pixels contribute exactly 0 to the value and the gradient.
        per_pixel = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX, reduction="none")
        return mean_over_labelled(per_pixel, target, weight, self.normalize)

    def __repr__(self) -> str:
        weight = None if self.weight is None else self.weight.tolist()
        return f"PartialCrossEntropy(weight={weight}, normalize={self.normalize!r})"


register_loss("partial_ce")(PartialCrossEntropy)
