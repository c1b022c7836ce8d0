"""Partial soft Dice loss: a multi-class soft Dice computed on the labelled pixels of a partially labelled mask only.

Milletari, Navab and Ahmadi, "V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image Segmentation",
3DV 2016 (arXiv:1606.04797), for the soft Dice; averaged over classes as in the class-mean Dice of Sudre, Li,
Vercauteren, Ourselin and Cardoso, "Generalised Dice overlap as a deep learning loss function for highly unbalanced
segmentations", DLMIA 2017 (arXiv:1707.03237), with fixed class weights rather than their ``1 / volume^2`` ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from registry import register_loss
from registry.losses._common import IGNORE_INDEX, check_number, check_weight, weight_on


class PartialDice:
    """Soft Dice over labelled pixels (target ``-1`` is ignored), ``1 -`` the (weighted) mean of per-class Dice scores.

    With ``p`` the softmax probabilities and ``g`` the one-hot labels, over the labelled pixels of the **whole batch**
    (every image together, not image by image), for each class ``c``::

        I_c = sum p_c g_c,   S_c = sum p_c + sum g_c,   dice_c = (2 I_c + smooth) / (S_c + smooth)

    Unlabelled pixels enter neither ``I_c`` nor ``S_c``: their logits are replaced by zeros before the softmax, so
    they have no influence on the value and an exactly zero gradient (whatever they hold, inf or NaN included).

    **Classes in the mean.** The loss is ``sum_c k_c w_c (1 - dice_c) / sum_c k_c w_c`` (``w_c = 1`` without
    ``weight``), where ``k_c`` is 1 for a class that is *present*: labelled on at least one pixel of the batch, or the
    arg-max prediction of at least one labelled pixel (all the tied classes, on a tie); the same rule as this harness's
    mIoU (a class absent from both truth and prediction is left out; one predicted but absent is kept, and scores low).
    Because the sums run over the whole batch, a class with a single labelled pixel in the batch counts in the mean as
    much as a class with thousands; a Dice computed image by image would see it in one image only, and would have to
    drop it from the others or score it there by convention. Classes that are absent and not predicted are left out
    rather than scored ``smooth / (S_c + smooth)``, near 1, which would dilute the loss by the number of absent classes.
    The loss is a batch-level quantity: like any Dice, it is not a sum over pixels, so it depends on which pixels share
    a batch.

    **Smoothing.** ``smooth`` (default 1.0, in units of pixels) keeps every ratio finite and differentiable and
    biases each ``dice_c`` towards 1 by about ``smooth / S_c``: negligible for a class with many labelled pixels,
    damping for one with a handful (with 1 labelled pixel and ``smooth = 1``, a perfect prediction scores 1 and one
    that gives the class no probability anywhere 1/2 rather than 0). A class predicted but absent scores
    ``smooth / (S_c + smooth)``: about 0.5 when it holds one pixel's worth of probability, so a smaller ``smooth``
    scores such false positives closer to 0, as mIoU does, but flattens their gradient (``smooth / (S_c + smooth)^2``)
    faster; their probability mass is penalised in any case through the Dice of the classes it is taken from. It must
    be positive.

    ``weight``: one positive number per class, a weighted mean over the present classes. A batch with no labelled
    pixel has no present class and gives a zero that still carries the graph, never NaN. Bad arguments raise
    :class:`registry.errors.UserError` when the loss is built.
    """

    def __init__(self, smooth: float = 1.0, weight: Sequence[float] | torch.Tensor | None = None):
        self.smooth = check_number("partial_dice", "smooth", smooth, positive=True)
        self.weight = check_weight("partial_dice", weight)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = weight_on("partial_dice", self.weight, logits)
        labelled = (target != IGNORE_INDEX).unsqueeze(1)  # [N, 1, H, W]
        logits = logits.float().masked_fill(~labelled, 0.0)  # exactly zero gradient where unlabelled
        probs = logits.softmax(1)
        mask = labelled.to(probs.dtype)
        truth = torch.zeros_like(probs).scatter_(1, target.clamp_min(0).unsqueeze(1), mask)  # one-hot where labelled
        dims = (0, 2, 3)
        truth_count = truth.sum(dims)
        intersection = (probs * truth).sum(dims)
        cardinality = (probs * mask).sum(dims) + truth_count
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth)
        # The arg-max of a labelled pixel (every tied class; amax over classes is ~100x faster than argmax on a CPU).
        predicted = ((logits == logits.amax(1, keepdim=True)) & labelled).any(0).flatten(1).any(1)
        present = ((truth_count > 0) | predicted).to(dice.dtype)
        included = present if weight is None else present * weight
        # No labelled pixel: nothing is present, and the quotient is an exact zero of the graph.
        return ((1 - dice) * included).sum() / included.sum().clamp_min(torch.finfo(dice.dtype).tiny)

    def __repr__(self) -> str:
        weight = None if self.weight is None else self.weight.tolist()
        return f"PartialDice(smooth={self.smooth}, weight={weight})"


register_loss("partial_dice", test_kwargs={"smooth": 1.0})(PartialDice)
