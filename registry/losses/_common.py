"""What the built-in losses share: the ignore label, and the checks of their arguments when they are built.

Arguments are checked in the builder, not at the first batch, and a bad one raises :class:`UserError`: the harness
builds every loss of a grid before training, so a mistake there ends in one line naming it, not a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch

from registry.errors import UserError

IGNORE_INDEX = -1
NORMALIZATIONS = ("count", "weight")


def check_weight(loss: str, weight: Sequence[float] | torch.Tensor | None) -> torch.Tensor | None:
    """Class weights as a float32 vector, or ``None``; anything but a list of positive finite numbers is refused."""
    if weight is None:
        return None
    try:
        tensor = torch.as_tensor(weight, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"{loss}: class weights must be a list of positive numbers, not {weight!r}") from None
    if tensor.ndim != 1 or tensor.numel() == 0 or not torch.isfinite(tensor).all() or (tensor <= 0).any():
        shown = tensor.tolist() if tensor.ndim else tensor.item()
        raise UserError(f"{loss}: class weights must be a list of positive numbers, not {shown}")
    return tensor


def check_normalize(loss: str, normalize: str) -> str:
    if normalize not in NORMALIZATIONS:
        raise UserError(f"{loss}: normalize must be one of {NORMALIZATIONS}, not {normalize!r}")
    return normalize


def check_number(loss: str, name: str, value: float, *, positive: bool) -> float:
    """A finite real number, ``> 0`` when ``positive`` and ``>= 0`` otherwise (bools are refused)."""
    bound = "> 0" if positive else ">= 0"
    if (isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value)
            or value < 0 or (positive and value == 0)):
        raise UserError(f"{loss}: {name} must be a finite number {bound}, not {value!r}")
    return float(value)


def weight_on(loss: str, weight: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    """The class weights on the logits' device, after checking there is one per class."""
    if weight is None:
        return None
    num_classes = logits.shape[1]
    if weight.numel() != num_classes:
        raise ValueError(f"{loss}: {weight.numel()} class weights for {num_classes} classes")
    return weight.to(logits.device)


def mean_over_labelled(per_pixel: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                       normalize: str) -> torch.Tensor:
    """The sum of per-pixel losses (already weighted, 0 at ignored pixels) divided by the count of labelled pixels,
    or with ``normalize="weight"`` by the sum of their class weights. Where nothing is labelled the sum is an exact
    zero of the graph, and so is the quotient: never NaN."""
    labelled = target != IGNORE_INDEX
    if weight is None or normalize == "count":
        denominator = labelled.sum().to(per_pixel.dtype)
    else:
        denominator = weight[target[labelled]].sum()
    return per_pixel.sum() / denominator.clamp_min(torch.finfo(per_pixel.dtype).tiny)
