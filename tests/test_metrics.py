"""Metrics against a hand-worked example and an independent NumPy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.metrics import PerBatchMIoU, confusion_matrix, scores


def test_confusion_matrix_hand_worked():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, -1, -1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, num_classes=3)
    # rows truth, columns prediction; the two -1 pixels are not counted
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert cm.dtype == torch.int64


def test_scores_hand_worked():
    cm = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    s = scores(cm)
    # IoU = TP / (TP + FP + FN): class 0: 1/(1+1+1); class 1: 2/(2+1+0); class 2: 1/(1+0+1)
    assert s.iou == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert s.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s.accuracy == pytest.approx(4 / 6)


def test_absent_class_is_left_out_and_predicted_absent_class_scores_zero():
    # class 2 never appears (truth or prediction); class 3 is predicted but never true
    cm = torch.tensor([[3, 0, 0, 1], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    s = scores(cm)
    assert math.isnan(s.iou[2])
    assert s.iou[3] == 0.0
    assert s.miou == pytest.approx((3 / 4 + 1.0 + 0.0) / 3)


def numpy_reference(pred: np.ndarray, target: np.ndarray, num_classes: int):
    keep = target != -1
    p, t = pred[keep], target[keep]
    ious = []
    for c in range(num_classes):
        tp = np.sum((p == c) & (t == c))
        fp = np.sum((p == c) & (t != c))
        fn = np.sum((p != c) & (t == c))
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    return float(np.mean(ious)), float(np.mean(p == t))


@pytest.mark.parametrize("seed", range(5))
def test_dataset_level_scores_match_independent_numpy(seed):
    rng = np.random.default_rng(seed)
    num_classes = 5
    target = rng.integers(-1, num_classes, (6, 20, 20))
    pred = np.where(rng.random(target.shape) < 0.6, np.maximum(target, 0), rng.integers(0, num_classes, target.shape))
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for i in range(0, 6, 2):  # accumulated batch by batch, scored once
        cm += confusion_matrix(torch.from_numpy(pred[i:i + 2]), torch.from_numpy(target[i:i + 2]), num_classes)
    miou, accuracy = numpy_reference(pred, target, num_classes)
    s = scores(cm)
    assert s.miou == pytest.approx(miou)
    assert s.accuracy == pytest.approx(accuracy)


def test_accuracy_is_not_micro_iou():
    cm = torch.tensor([[8, 2], [2, 8]])
    s = scores(cm)
    micro_iou = 16 / (16 + 4 + 4)  # summed TP over summed TP + FP + FN
    assert s.accuracy == pytest.approx(16 / 20)
    assert s.accuracy != pytest.approx(micro_iou)
    assert s.miou == pytest.approx(8 / 12)


def test_per_batch_miou_differs_from_dataset_level():
    """A batch without the rare class scores high on its own; the reference's per-batch mean rewards that."""
    num_classes = 2
    batches = [
        (torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 0])),  # perfect, only class 0
        (torch.tensor([0, 0, 0, 0]), torch.tensor([1, 1, 0, 0])),  # misses the rare class
    ]
    per_batch = PerBatchMIoU()
    total = torch.zeros(2, 2, dtype=torch.int64)
    for pred, target in batches:
        cm = confusion_matrix(pred, target, num_classes)
        per_batch.add(cm)
        total += cm
    # batch 1: mIoU 1.0 (class 1 absent); batch 2: class 0 IoU 2/4, class 1 IoU 0 -> 0.25
    assert per_batch.value() == pytest.approx((1.0 + 0.25) / 2)
    # dataset level: class 0 IoU 6/8, class 1 IoU 0 -> 0.375
    assert scores(total).miou == pytest.approx(0.375)


def test_confusion_matrix_rejects_out_of_range_target():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), num_classes=3)


def test_confusion_matrix_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), num_classes=3)


def test_empty_confusion_matrix_scores_nan_not_zero():
    s = scores(torch.zeros(3, 3, dtype=torch.int64))
    assert math.isnan(s.miou) and math.isnan(s.accuracy)
