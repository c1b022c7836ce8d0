"""Pseudo-labels (Lee, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for Deep Neural
Networks", ICML 2013 Workshop on Challenges in Representation Learning)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from registry import register_regularizer
from registry.errors import UserError
from registry.regularizers._common import masked_mean, unlabelled


class PseudoLabel:
    """Cross-entropy of the unlabelled pixels whose largest softmax probability is at least ``threshold`` toward their
    arg-max class (the pseudo-label carries no gradient), averaged over those pixels. Pixels under the threshold, and
    labelled pixels, have no influence; when no pixel qualifies the value is a zero that carries the graph."""

    def __init__(self, threshold: float = 0.9):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
            raise UserError(f"pseudo_label: threshold must be a number in (0, 1], not {threshold!r}")
        self.threshold = float(threshold)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, images: torch.Tensor,
                 progress: float) -> torch.Tensor:
        logits = logits.float()
        with torch.no_grad():
            confidence, pseudo = torch.softmax(logits, dim=1).max(1)
        chosen = unlabelled(target) & (confidence >= self.threshold)
        per_pixel = F.cross_entropy(logits, pseudo, reduction="none")
        return masked_mean(per_pixel, chosen)

    def __repr__(self) -> str:
        return f"PseudoLabel(threshold={self.threshold})"


register_regularizer("pseudo_label")(PseudoLabel)
