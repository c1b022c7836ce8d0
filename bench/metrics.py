"""Segmentation metrics in two stages: count a confusion matrix, then score it.

The counts are accumulated over a whole evaluation split (on the device, as int64) and scored once: mIoU is a
dataset-level figure, not a mean of per-batch or per-image scores. The reference experiment averaged per-batch mIoUs;
:class:`PerBatchMIoU` reproduces that for comparison only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = -1) -> torch.Tensor:
    """Counts ``[num_classes, num_classes]`` (int64, on the inputs' device): rows are the true class, columns the
    predicted one. Pixels whose target is ``ignore_index`` (the ``-1`` of an unlabelled or not-annotated pixel) are not
    counted. ``target`` may be of any integer dtype: it is compared as int64 (torch would compare a uint8 target with
    ``-1`` as with 255)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    target = target.to(torch.int64)
    keep = target != ignore_index
    truth = target[keep]
    guess = pred[keep].to(torch.int64)
    if truth.numel() and (truth.min() < 0 or truth.max() >= num_classes):
        raise ValueError(f"target holds a class outside 0..{num_classes - 1}")
    flat = torch.bincount(truth * num_classes + guess, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


class Scores(NamedTuple):
    """``miou``: mean IoU over the classes present in the truth or the prediction; ``iou``: per class, NaN for a class
    absent from both; ``accuracy``: pixel accuracy, the share of counted pixels predicted right."""

    miou: float
    iou: list[float]
    accuracy: float


def scores(cm: torch.Tensor) -> Scores:
    """Score a confusion matrix. A class absent from both truth and prediction is left out of the mean; a class that
    is predicted but absent from the truth scores 0."""
    cm = cm.detach().to("cpu", torch.float64)
    true_positive = cm.diag()
    union = cm.sum(0) + cm.sum(1) - true_positive
    iou = [float(tp / u) if u > 0 else math.nan for tp, u in zip(true_positive, union)]
    present = [value for value in iou if not math.isnan(value)]
    total = float(cm.sum())
    return Scores(
        miou=sum(present) / len(present) if present else math.nan,
        iou=iou,
        accuracy=float(true_positive.sum()) / total if total else math.nan,
    )


class PerBatchMIoU:
    """The reference experiment's figure: the mean over batches of each batch's own mIoU. It depends on the batch size
    and favours batches in which rare classes are absent; reported beside the dataset-level mIoU, never instead."""

    def __init__(self) -> None:
        self._batch_cms: list[torch.Tensor] = []  # kept on the device: scoring each batch would sync every step

    def add(self, batch_cm: torch.Tensor) -> None:
        self._batch_cms.append(batch_cm)

    def value(self) -> float:
        if not self._batch_cms:
            return math.nan
        values = [scores(cm).miou for cm in torch.stack(self._batch_cms).cpu()]
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan
