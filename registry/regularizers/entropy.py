"""Entropy minimisation (Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization", NIPS 2005)."""

from __future__ import annotations

import torch

from registry import register_regularizer
from registry.regularizers._common import check_rampup, masked_mean, sigmoid_rampup, unlabelled


class Entropy:
    """Mean Shannon entropy (nats) of the softmax over the unlabelled pixels, times a ramp-up factor.

    The factor is Laine & Aila (2017)'s sigmoid ramp ``exp(-5 (1 - t)^2)`` over the first ``rampup`` share of training
    (``t = progress / rampup``; ``rampup = 0`` means no ramp). The value is 0 for one-hot-confident predictions and
    ``log C`` for uniform ones; labelled pixels have no influence on the value or the gradient.
    """

    def __init__(self, rampup: float = 0.3):
        self.rampup = check_rampup("entropy", rampup)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, images: torch.Tensor,
                 progress: float) -> torch.Tensor:
        log_p = torch.log_softmax(logits.float(), dim=1)
        per_pixel = -(log_p.exp() * log_p).sum(1)
        return sigmoid_rampup(progress, self.rampup) * masked_mean(per_pixel, unlabelled(target))

    def __repr__(self) -> str:
        return f"Entropy(rampup={self.rampup})"


register_regularizer("entropy")(Entropy)
