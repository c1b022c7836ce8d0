"""Scores over whole scenes: a scene's confusion matrix against its label raster, counted as its rows are predicted,
and the figures drawn from it, as ``bench predict --labels`` and a grid's test scenes (:mod:`bench.whole_scenes`)
store them with a cell."""

from __future__ import annotations

import math
import time
from contextlib import ExitStack

import numpy as np
import torch

from bench.metrics import scores
from bench.predict import Scene
from registry.datasets.rasters import opened, reading
from registry.errors import UserError


class SceneConfusion:
    """A scene's confusion matrix (rows the truth) against its label raster, counted a band of rows at a time as
    they are predicted, between :meth:`open` and :meth:`close` (the label raster stays open). The scene's
    ``read_classes`` maps label values to classes (a dataset's test scenes); without it a value is a class index,
    and negative values and the raster's nodata are not annotated."""

    def __init__(self, scene: Scene, class_names: tuple[str, ...]):
        self.scene, self.names = scene, class_names
        self.matrix = np.zeros((len(class_names),) * 2, np.int64)
        self._labels: ExitStack | None = None

    def open(self) -> None:
        self._labels = ExitStack()
        self.source = self._labels.enter_context(opened(self.scene.labels, "label raster"))

    def close(self) -> None:
        if self._labels is not None:
            self._labels.close()
            self._labels = None

    def add(self, row: int, predicted: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Rows ``row ..`` of the scene, predicted as ``predicted`` ``[rows, width]``; ``valid`` (the same shape,
        None: all) says which pixels the scene holds data for: only those are scored."""
        from rasterio.windows import Window

        window = Window(0, row, self.scene.width, predicted.shape[0])
        with reading(self.scene.labels, "label raster"):
            truth = (self.scene.read_classes or self._value_classes)(self.source, window).astype(np.int64)
        annotated = truth >= 0 if valid is None else (truth >= 0) & valid
        flat = truth[annotated] * len(self.names) + predicted[annotated]
        self.matrix += np.bincount(flat, minlength=len(self.names) ** 2).reshape(self.matrix.shape)

    def _value_classes(self, source, window) -> np.ndarray:
        """Label values as class indices, ``-1`` where negative or nodata; any other value that is no class is
        refused."""
        truth = source.read(1, window=window).astype(np.int64)
        annotated = (truth >= 0) & (truth != source.nodata if source.nodata is not None else True)
        wrong = annotated & (truth >= len(self.names))
        if wrong.any():
            rows = f"{window.row_off}..{window.row_off + len(truth) - 1}"
            raise UserError(f"{self.scene.labels}: value {int(truth[wrong][0])} ({int(wrong.sum())} pixels in rows "
                            f"{rows}) is no class: the classes are 0..{len(self.names) - 1} ({', '.join(self.names)}); "
                            "nodata and negative values count as not annotated")
        return np.where(annotated, truth, -1)


def scene_scores(confusion: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """mIoU, per-class IoU and pixel accuracy of a confusion matrix, and the matrix."""
    figures = scores(torch.from_numpy(confusion))
    return {"miou": finite(figures.miou),
            "iou": {name: finite(iou) for name, iou in zip(class_names, figures.iou, strict=True)},
            "accuracy": finite(figures.accuracy), "pixels": int(confusion.sum()),
            "confusion_matrix": confusion.tolist()}


def finite(value: float | None) -> float | None:
    """JSON has no NaN: a class absent from truth and prediction has no IoU (None, also as the store gives it back)."""
    return None if value is None or math.isnan(value) else value


def stored_scene_scores(figures: dict, labels: str, overlap: int | None, tta: bool) -> dict:
    """What the results store keeps of a cell's scene-level scores (``figures``: each scene's and ``all`` of them, as
    :func:`scene_scores` gives them): those over all the scenes, the scenes and the labels they were scored against,
    and how they were predicted (``overlap``, ``tta``)."""
    every = figures["all"]
    return {"miou": every["miou"], "accuracy": every["accuracy"], "iou": every["iou"], "pixels": every["pixels"],
            "scenes": sorted(figures["scenes"]), "labels": labels, "overlap": overlap, "tta": tta,
            "date": time.strftime("%Y-%m-%d")}
