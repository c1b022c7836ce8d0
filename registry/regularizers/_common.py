"""What the built-in regularisers share: the unlabelled-pixel mask, the ramp-up, a masked mean that is never NaN."""

from __future__ import annotations

import math

import torch

from registry.errors import UserError
from registry.losses._common import IGNORE_INDEX, check_number


def unlabelled(target: torch.Tensor) -> torch.Tensor:
    return target == IGNORE_INDEX


def masked_mean(per_pixel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_pixel`` where ``mask``; an exact zero of the graph where the mask is empty (never NaN)."""
    mask = mask.to(per_pixel.dtype)
    return (per_pixel * mask).sum() / mask.sum().clamp_min(1.0)


def check_rampup(name: str, rampup: float) -> float:
    value = check_number(name, "rampup", rampup, positive=False)
    if value > 1:
        raise UserError(f"{name}: rampup is a share of training in [0, 1], not {rampup!r}")
    return value


def sigmoid_rampup(progress: float, rampup: float) -> float:
    """Laine & Aila (2017)'s ramp ``exp(-5 (1 - t)^2)``, ``t = progress / rampup`` clipped to [0, 1]; 1 when
    ``rampup`` is 0."""
    if rampup <= 0:
        return 1.0
    t = min(max(float(progress) / rampup, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)
