"""The evaluation loop: one pass of a model over a fully labelled split (every epoch's validation, a cell's test
evaluation, ``bench evaluate``'s external weights), counted into a dataset-level confusion matrix and scored
(:mod:`bench.metrics`), with the reference's per-batch mIoU beside it. Pixels the dataset has not annotated (``-1``
in int8 or int16 masks) stay ``-1`` on both data paths (the masks are widened to int64, never cast to uint8) and are
left out of the counts.

Over several processes batch ``b`` is evaluated by rank ``b % world``; the per-batch counts, exact integers, are
summed over the ranks before anything is scored, so every rank gets the figures of one process evaluating everything.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench import distributed
from bench.batches import eval_batches
from bench.data import Normalizer
from bench.device import Precision
from bench.metrics import PerBatchMIoU, confusion_matrix, scores


def evaluate(model, images: np.ndarray, masks: np.ndarray, num_classes: int, normalize: Normalizer,
             batch_size: int, precision: Precision) -> dict[str, Any]:
    """One pass over an evaluation split (the validation or the test tiles): a dataset-level confusion matrix, and the
    reference's per-batch mIoU. Over several processes ``model`` must be the plain module, not the DDP wrapper, whose
    forward is a collective."""
    model.eval()
    device = normalize.device
    rank, world_size = distributed.world()
    batch_cms = torch.zeros(-(-len(images) // batch_size), num_classes, num_classes, dtype=torch.int64, device=device)
    with torch.inference_mode(), precision.autocast():
        for index, (batch_images, batch_masks) in enumerate(eval_batches(images, masks, batch_size)):
            if index % world_size != rank:
                continue
            batch_images, target = normalize(batch_images, batch_masks)
            batch_cms[index] = confusion_matrix(model(batch_images).argmax(1), target, num_classes)
    distributed.all_reduce_sum(batch_cms)
    cm = batch_cms.sum(0)
    per_batch = PerBatchMIoU()
    for batch_cm in batch_cms:
        per_batch.add(batch_cm)
    result = scores(cm)
    return {"miou": result.miou, "accuracy": result.accuracy, "iou": result.iou,
            "per_batch_miou": per_batch.value(), "confusion_matrix": cm.cpu().tolist()}


def eval_batch_size(recipe: dict[str, Any]) -> int:
    """The batch a recipe evaluates in: its ``eval_batch_size``, else twice its training batch."""
    return recipe["eval_batch_size"] or 2 * recipe["batch_size"]
