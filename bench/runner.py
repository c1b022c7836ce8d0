"""Runs a grid: checks every cell before the first one trains, skips finished cells, resumes interrupted ones, records
failures and goes on, then regenerates the leaderboard.

Only this module writes the results store during a run, and only one run may use an output folder at a time.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import registry
from bench.data import partial_masks
from bench.grid import Cell, Component, Grid
from bench.provenance import provenance
from bench.store import ResultStore
from bench.train import CellData, train_cell
from registry.errors import UserError
from registry.locks import folder_lock

STORE_NAME = "results.sqlite"


class RunEvents:
    """What a run reports as it goes; the command line shows it with rich, tests can listen. Does nothing here."""

    def grid_started(self, grid: Grid, todo: list[Cell], finished: int) -> None: ...
    def cell_started(self, cell: Cell, position: int, resume_epoch: int) -> None: ...
    def step(self, step: int, total: int) -> None: ...
    def epoch_done(self, cell: Cell, record: dict[str, Any]) -> None: ...
    def cell_done(self, cell: Cell, metrics: dict[str, Any]) -> None: ...
    def cell_failed(self, cell: Cell, error: str) -> None: ...


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def exclusive(out_dir: Path):
    """Hold the output folder's lock: two runs writing one store would each believe they own its unfinished cells."""
    return folder_lock(out_dir, f"another bench run is using {out_dir}; wait for it or pass another --out")


class GridData:
    """The grid's dataset, built once, and the partial masks of the cells in hand (one set at a time: cells that
    share masks come together in a grid)."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.dataset = registry.create_dataset(grid.dataset.name, **grid.dataset_kwargs())  # identity and location
        self._masks_key: tuple | None = None
        self._masks: np.ndarray | None = None

    def tile_shape(self) -> tuple[int, int, int]:
        images, _ = self.dataset.split("val")
        return tuple(images.shape[1:])

    def for_cell(self, cell: Cell) -> CellData:
        train_images, train_full = self.dataset.split("train")
        val_images, val_masks = self.dataset.split("val")
        key = (cell.masker.name, json.dumps(cell.masker.kwargs, sort_keys=True), cell.fraction, cell.seed)
        if key != self._masks_key:
            masker = registry.create_masker(cell.masker.name, **cell.masker.kwargs)
            self._masks, self._masks_key = partial_masks(train_full, masker, cell.fraction, cell.seed), key
        test_images = test_masks = None
        if "test" in self.dataset.splits:
            test_images, test_masks = self.dataset.split("test")
        return CellData(train_images, self._masks, val_images, val_masks, self.dataset.num_classes,
                        tuple(self.dataset.mean), tuple(self.dataset.std), test_images, test_masks)


def build_without_weights(arch: Component, num_classes: int, in_chans: int) -> torch.nn.Module:
    """The architecture on the meta device (no memory for its weights), to read its attributes before training; a
    builder that cannot work there (one that loads weights, say) is built on the CPU instead."""
    try:
        with torch.device("meta"):
            return registry.create_arch(arch.name, num_classes=num_classes, in_chans=in_chans, **arch.kwargs)
    except UserError:
        raise
    except Exception:
        return registry.create_arch(arch.name, num_classes=num_classes, in_chans=in_chans, **arch.kwargs)


def check_cells(grid: Grid, data: GridData) -> None:
    """Everything that can be wrong with a grid before any training: raises :class:`UserError` naming the problem."""
    height, width, channels = data.tile_shape()
    num_classes = data.dataset.num_classes
    recipe = grid.cells[0].recipe
    weights = recipe["class_weights"]
    if weights is not None and len(weights) != num_classes:
        raise UserError(f"{grid.path}: [recipe] class_weights has {len(weights)} values; dataset "
                        f"{grid.dataset.name!r} has {num_classes} classes ({', '.join(data.dataset.class_names)})")
    for arch in {cell.arch.label: cell.arch for cell in grid.cells}.values():
        model = build_without_weights(arch, num_classes, channels)
        if height % model.size_divisor or width % model.size_divisor:
            raise UserError(f"{grid.path}: architecture {arch.label!r} needs tile sides divisible by "
                            f"{model.size_divisor}, but {grid.dataset.name!r} tiles are {height}x{width}")
    for loss in {cell.loss.label: cell.loss for cell in grid.cells}.values():
        registry.create_loss(loss.name, **loss.kwargs, weight=weights)
    for masker in {cell.masker.label: cell.masker for cell in grid.cells}.values():
        check = getattr(registry.create_masker(masker.name, **masker.kwargs), "check", None)
        if check is not None:  # optional: refuses parameters a tile of this size cannot honour
            try:
                check(height, width)
            except UserError as err:
                raise UserError(f"{grid.path}: {err}") from None


def run_grid(grid: Grid, out_dir: Path, device: torch.device, events: RunEvents = RunEvents()) -> RunSummary:
    """Train every unfinished cell of ``grid``, storing results in ``out_dir``."""
    summary = RunSummary()
    with exclusive(out_dir):
        data = GridData(grid)
        check_cells(grid, data)
        store = ResultStore(out_dir / STORE_NAME)
        try:
            todo = []
            for cell in grid.cells:
                row = store.get(cell.cell_id)
                if row is not None and row.status == "done":
                    summary.skipped.append(cell.cell_id)
                else:
                    todo.append(cell)
            events.grid_started(grid, todo, len(summary.skipped))
            origin = provenance(device)
            for position, cell in enumerate(todo):
                run_cell(cell, data, store, out_dir, device, origin, position, events, summary)
        finally:
            store.close()
    return summary


def run_cell(cell: Cell, data: GridData, store: ResultStore, out_dir: Path, device: torch.device,
             origin: dict[str, Any], position: int, events: RunEvents, summary: RunSummary) -> None:
    checkpoint_dir = out_dir / "checkpoints" / cell.cell_id
    previous = store.get(cell.cell_id)
    resume_epoch = len(previous.history) if previous is not None and (checkpoint_dir / "last.pt").exists() else 0
    store.start(cell.cell_id, cell.grid, cell.dataset.name, cell.label, cell.config, origin)
    events.cell_started(cell, position, resume_epoch)

    def on_epoch(history: list[dict[str, Any]]) -> None:
        store.record_epoch(cell.cell_id, history)
        events.epoch_done(cell, history[-1])

    try:
        history, metrics = train_cell(cell, data.for_cell(cell), device, checkpoint_dir, on_epoch, events.step)
    except KeyboardInterrupt:
        store.interrupt(cell.cell_id)
        raise
    except Exception as err:  # one broken cell must not stop the grid: record why, and go on
        error = f"{type(err).__name__}: {err}"
        store.fail(cell.cell_id, error + "\n" + traceback.format_exc())
        summary.failed.append(cell.cell_id)
        events.cell_failed(cell, error)
        return
    metrics["class_names"] = list(data.dataset.class_names)
    store.finish(cell.cell_id, history, metrics)
    summary.done.append(cell.cell_id)
    events.cell_done(cell, metrics)
