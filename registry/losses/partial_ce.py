"""Partial cross-entropy: cross-entropy over the labelled pixels of a partially labelled mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from registry import register_loss

IGNORE_INDEX = -1
NORMALIZATIONS = ("count", "weight")


class PartialCrossEntropy:
    """Cross-entropy over labelled pixels (target ``-1`` is ignored), with optional class weights.

    The sum of the (weighted) per-pixel losses is divided by:

    - ``normalize="count"`` (default): the number of labelled pixels, as the reference experiment did, so a class
      weight scales its pixels' share of the loss;
    - ``normalize="weight"``: the sum of the labelled pixels' class weights, PyTorch's convention for
      ``cross_entropy(weight=..., ignore_index=...)``, a weighted mean.

    Without class weights the two agree. A batch with no labelled pixel gives ``0 * logits.sum()``: zero, finite, and
    still part of the graph so that ``backward()`` works (PyTorch's own mean-reduced cross-entropy gives NaN there).
    """

    def __init__(self, weight: Sequence[float] | torch.Tensor | None = None, normalize: str = "count"):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"partial_ce: normalize must be one of {NORMALIZATIONS}, not {normalize!r}")
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.float32)
            if weight.ndim != 1 or not torch.isfinite(weight).all() or (weight <= 0).any():
                raise ValueError(f"partial_ce: class weights must be a list of positive numbers, not {weight.tolist()}")
        self.weight = weight
        self.normalize = normalize

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        weight = None
        if self.weight is not None:
            if self.weight.numel() != num_classes:
                raise ValueError(f"partial_ce: {self.weight.numel()} class weights for {num_classes} classes")
            weight = self.weight.to(logits.device)
        labelled = target != IGNORE_INDEX
        # Fused per-pixel loss in float32; ignored pixels contribute exactly 0 to the value and the gradient.
        per_pixel = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX, reduction="none")
        if weight is None or self.normalize == "count":
            denominator = labelled.sum().to(per_pixel.dtype)
        else:
            denominator = weight[target[labelled]].sum()
        # Where nothing is labelled the sum is an exact zero of the graph, and so is the quotient.
        return per_pixel.sum() / denominator.clamp_min(torch.finfo(per_pixel.dtype).tiny)

    def __repr__(self) -> str:
        weight = None if self.weight is None else self.weight.tolist()
        return f"PartialCrossEntropy(weight={weight}, normalize={self.normalize!r})"


register_loss("partial_ce")(PartialCrossEntropy)
