"""Scene-level evaluation inside a grid: a dataset's test scenes (its ``test_scenes``, registry's DATASET_CONTRACT)
mapped whole with a cell's best weights, as ``bench predict`` maps them (blended windows at the training resolution,
the default overlap, no flips), and scored against their label rasters, edges included. The result is the cell's
``scene`` metrics, in the form that ``bench predict --labels`` stores (:func:`bench.scene_scores.stored_scene_scores`),
so that the leaderboard's "scene mIoU" and ``bench export`` show either."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data import Normalizer
from bench.device import Precision
from bench.predict import Predictor, blended_rows, inspect_scene, intra_op_threads, layout_of
from bench.scene_scores import SceneConfusion, scene_scores, stored_scene_scores

TEST_SCENES = "the dataset's test scenes"  # what the stored scores say they were scored against


@dataclass(frozen=True)
class WholeTestScenes:
    """A dataset's test scenes and what mapping them needs to know of the dataset."""

    scenes: tuple[Any, ...]  # the dataset's test_scenes
    class_names: tuple[str, ...]
    scale: float  # the stored tiles' side over their source side
    bands: tuple[int, ...] | None  # raster band numbers, from 1; None: every band

    @classmethod
    def of(cls, dataset: Any) -> WholeTestScenes | None:
        """The test scenes of ``dataset``; None when it has none."""
        scenes = tuple(getattr(dataset, "test_scenes", None) or ())
        if not scenes:
            return None
        bands = getattr(dataset, "bands", None)
        return cls(scenes, tuple(dataset.class_names), float(getattr(dataset, "scale", 1.0)),
                   None if bands is None else tuple(int(band) for band in bands))

    def score(self, model: torch.nn.Module, normalize: Normalizer, precision: Precision, batch_size: int,
              tiles: np.ndarray) -> dict[str, Any]:
        """The scores of ``model`` (the best weights, in evaluation mode, on ``normalize``'s device) over every test
        scene and over all of them; ``tiles`` are the training tiles, whose side, channels and dtype say how the
        scenes are read."""
        started = time.perf_counter()
        predictor = Predictor(model, "best weights", self.class_names, normalize, tiles.shape[1], self.scale,
                              self.bands, tiles.shape[-1], np.dtype(tiles.dtype), normalize.device, precision,
                              batch_size)
        per_scene, total = {}, np.zeros((len(self.class_names),) * 2, np.int64)
        for test_scene in self.scenes:
            scene = replace(inspect_scene(Path(test_scene.image), predictor), labels=Path(test_scene.labels),
                            read_classes=test_scene.read_classes)
            confusion = SceneConfusion(scene, self.class_names)
            confusion.open()
            try:
                with torch.inference_mode(), intra_op_threads(1):
                    for row, probs, valid in blended_rows(predictor, scene, layout_of(scene, predictor, None)):
                        confusion.add(row, probs.max(dim=0).indices.to(torch.uint8).cpu().numpy(), valid)
            finally:
                confusion.close()
            per_scene[str(scene.path)] = scene_scores(confusion.matrix, self.class_names)
            total += confusion.matrix
        figures = {"scenes": per_scene, "all": scene_scores(total, self.class_names)}
        return {**stored_scene_scores(figures, TEST_SCENES, None, False),
                "seconds": time.perf_counter() - started}
