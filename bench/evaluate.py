"""``bench evaluate``: weights the harness did not train, scored on a grid's dataset as its cells are scored.

The grid gives the dataset and its normalisation (the dataset's mean and std), and its recipe the evaluation batch
(``eval_batch_size``, else twice ``batch_size``) and the precision (``amp``); its other axes play no part. The scoring
is :func:`bench.scoring.evaluate`, the one every epoch of a trained cell gets: the dataset-level mIoU (one confusion
matrix over the split), per-class IoU, pixel accuracy, and the reference experiment's per-batch mIoU at that batch.

An evaluation is stored as a finished row marked ``"kind": "evaluation"``, its identity the hash of what decides its
figures: the grid, the dataset's identity, the architecture, the weights' SHA-256, the split, the batch and the
precision. The same evaluation again finds that row, and stores nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.cell_job import grid_data
from bench.checks import build_checked
from bench.data import Normalizer
from bench.device import Precision, choose_precision, clock
from bench.identity import CONFIG_VERSION, Component, Grid, config_id, file_digest
from bench.leaderboard import mean_std
from bench.models import build_model
from bench.provenance import provenance
from bench.scoring import eval_batch_size, evaluate
from bench.store import EVALUATION, CellRow, ResultStore
from bench.tables import Listing
from bench.weights import load_into, read_state_dict
from registry.errors import UserError

EVALUATED_SPLITS = ("val", "test")  # the fully labelled splits a grid's dataset may have


@dataclass
class Evaluation:
    """One weights file, loaded into its architecture on the device, and the split it is scored on."""

    grid: Grid
    arch: Component
    weights: Path
    sha256: str
    split: str
    images: np.ndarray  # uint8 [N, H, W, C]
    masks: np.ndarray  # uint8 [N, H, W]
    dataset: Any  # the grid's dataset (registry.DATASETS): classes, mean and std
    model: torch.nn.Module
    device: torch.device
    batch_size: int
    precision: Precision

    @property
    def config(self) -> dict[str, Any]:
        return {"version": CONFIG_VERSION, "kind": EVALUATION, "grid": self.grid.name,
                "dataset": self.grid.dataset.as_config(), "arch": self.arch.as_config(),
                "weights_sha256": self.sha256, "split": self.split, "eval_batch_size": self.batch_size,
                "precision": self.precision.name}

    @property
    def cell_id(self) -> str:
        return config_id(self.config)

    @property
    def label(self) -> str:
        return f"{self.arch.label} · {self.weights.name} · {self.split}"

    def score(self) -> dict[str, Any]:
        """The figures, as the row's metrics."""
        normalize = Normalizer(self.dataset.mean, self.dataset.std, self.device)
        started = clock(self.device)
        figures = evaluate(self.model, self.images, self.masks, self.dataset.num_classes, normalize, self.batch_size,
                           self.precision)
        return {**figures, "class_names": list(self.dataset.class_names), "eval_batch_size": self.batch_size,
                "split": self.split, "tiles": len(self.images), "weights_sha256": self.sha256,
                "weights_file": str(self.weights.resolve()), "eval_seconds": clock(self.device) - started,
                "precision": self.precision.name}

    def store_in(self, store: ResultStore, metrics: dict[str, Any]) -> CellRow:
        origin = {**provenance(self.device), "grid_file": str(self.grid.path.resolve())}
        store.add_done(self.cell_id, self.grid.name, self.grid.dataset.name, self.label, self.config, origin, metrics)
        return store.get(self.cell_id)


def prepare_evaluation(grid: Grid, arch: Component, weights: Path, split: str, device: torch.device) -> Evaluation:
    """Everything checked before anything is scored or stored: the weights file read, the split there, the
    architecture built for the dataset on ``device`` as training sets it up (:func:`bench.models.build_model`), with
    the weights loaded."""
    state = read_state_dict(weights)
    dataset = build_checked(lambda: grid_data(grid).dataset, "dataset", grid.dataset, grid.dataset_place)
    images, masks = split_tiles(grid, dataset, split)
    model = build_checked(lambda: build_model(arch, dataset.num_classes, images.shape[-1], device).module,
                          "architecture", arch, f"--arch {arch.label}")
    height, width = images.shape[1:3]
    if height % model.size_divisor or width % model.size_divisor:
        raise UserError(f"--arch {arch.label}: needs tile sides divisible by {model.size_divisor}, but "
                        f"{grid.dataset.name!r} tiles are {height}x{width}")
    load_into(model, state, dataset.num_classes, f"--weights {weights}", arch.label)
    model.eval()
    recipe = grid.cells[0].recipe  # the grid's one recipe: every cell has it
    return Evaluation(grid, arch, weights, file_digest(str(weights)), split, images, masks, dataset, model, device,
                      eval_batch_size(recipe), choose_precision(device, recipe["amp"]))


def split_tiles(grid: Grid, dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's tiles; a UserError naming the dataset's splits when it has none of them."""
    if split in dataset.splits:
        images, masks = dataset.split(split)
        if len(images):
            return images, masks
    others = ", ".join(name for name in dataset.splits if name != split)
    raise UserError(f"{grid.dataset_place(f'{split}_size')}: --split {split}: dataset {grid.dataset.name!r} has no "
                    f"{split} tiles; its splits: {others}")


def stored_on(row: CellRow) -> str:
    return datetime.fromisoformat(row.finished_at).strftime("%Y-%m-%d %H:%M UTC")


def heading(row: CellRow) -> str:
    """What a stored evaluation scored, in one line above its tables."""
    metrics = row.metrics
    return (f"{row.label} (SHA-256 {metrics['weights_sha256'][:12]}): {metrics['tiles']} {metrics['split']} tiles "
            f"of {row.dataset} (grid {row.grid}), {metrics['precision']}")


def figures_listings(row: CellRow) -> list[Listing]:
    """A stored evaluation's figures, and its confusion matrix, as tables for the terminal."""
    metrics = row.metrics
    names = metrics["class_names"]
    listing = Listing(f"figures over the {metrics['split']} split", ("figure", "value"), right=frozenset({"value"}))
    per_batch = f"per-batch mIoU (batches of {metrics['eval_batch_size']})"
    listing.rows = [("mIoU (dataset-level)", mean_std([metrics["miou"]], 4)),
                    (per_batch, mean_std([metrics["per_batch_miou"]], 4)),
                    ("pixel accuracy", mean_std([metrics["accuracy"]], 4)),
                    *((f"IoU {name}", mean_std([iou], 4)) for name, iou in zip(names, metrics["iou"], strict=True))]
    matrix = Listing("confusion matrix (pixels; rows: truth, columns: prediction)", ("truth", *names),
                     right=frozenset(names))
    matrix.rows = [(name, *map(str, counts)) for name, counts in zip(names, metrics["confusion_matrix"], strict=True)]
    return [listing, matrix]
