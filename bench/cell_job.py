"""One cell's training as a job that any executor can run: in the driver's process, in a worker process on one GPU,
or in a Ray task on another machine.

A job reports as it goes through a callback, with the messages below (:data:`JobMessage`: started, each epoch,
steps, warnings), and returns a :class:`JobResult`; it never writes the results store, which only the driver does.
Everything in a job, its messages and its result is picklable, so it can cross processes.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import registry
from bench import checkpoints
from bench.acquisition import ActiveRounds
from bench.data import annotated_pixels, partial_masks
from bench.identity import Cell, Grid
from bench.provenance import provenance
from bench.train import CellData, train_cell
from bench.whole_scenes import WholeTestScenes
from registry.annotation import priced, tally
from registry.errors import where_raised
from registry.locks import writers_lock
from registry.maskers.active import Acquisition


@dataclass(frozen=True)
class Started:
    cell_id: str
    host: str  # the machine and device, as shown to the user: "node-3 cuda:1"
    provenance: dict[str, Any]  # bench.provenance.provenance() on that machine


@dataclass(frozen=True)
class EpochDone:
    cell_id: str
    history: list[dict[str, Any]]  # every epoch so far, this one last


@dataclass(frozen=True)
class Step:
    cell_id: str
    step: int
    total: int  # steps in the epoch


@dataclass(frozen=True)
class Warned:
    cell_id: str
    message: str  # one line: a damaged checkpoint set aside, say


JobMessage = Started | EpochDone | Step | Warned
Report = Callable[[JobMessage], None]


class GridData:
    """The grid's dataset, built once, and the partial masks of the cells in hand (one set at a time: cells that
    share masks come together in a grid)."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.dataset = registry.create_dataset(grid.dataset.name, **grid.dataset_kwargs())  # identity and location
        self._masks_key: tuple | None = None
        self._masks: np.ndarray | None = None
        self._train_annotated: int | None = None
        self._annotation: dict[str, float] = {}  # what an annotator did for those masks (registry.annotation)
        self._acquisition: Acquisition | None = None  # an active masker's rounds: those masks are its start masks

    def tile_shape(self) -> tuple[int, int, int]:
        images, _ = self.dataset.split("val")
        return tuple(images.shape[1:])

    def _draw_masks(self, cell: Cell) -> None:
        """The cell's partial masks in hand, with what they count for "labelled %" and for the annotator."""
        key = (cell.masker.name, json.dumps(cell.masker.kwargs, sort_keys=True), cell.fraction, cell.seed)
        if key != self._masks_key:
            _, train_full = self.dataset.split("train")
            masker = registry.create_masker(cell.masker.name, **cell.masker.kwargs)
            self._masks, self._masks_key = partial_masks(train_full, masker, cell.fraction, cell.seed), key
            self._train_annotated = annotated_pixels(train_full)  # "labelled %" is a share of these
            self._annotation = tally(masker.annotation, self._masks)
            self._acquisition = getattr(masker, "acquisition", None)

    def annotation(self, cell: Cell) -> dict[str, Any]:
        """The cell's annotation priced at the grid's costs, as training stores it: for a finished cell stored
        without it (before annotation was counted), from its masks drawn again."""
        self._draw_masks(cell)
        return priced(self._annotation, self.grid.annotation_cost)

    def start_keeps_labels(self, cell: Cell, sample: int = 16) -> bool:
        """Whether the cell's masker labels any pixel of the training split: asked of its first ``sample`` tiles,
        and of all of them only when those have no label (an active cell's start masks must give round 0 some)."""
        _, train_full = self.dataset.split("train")
        masker = registry.create_masker(cell.masker.name, **cell.masker.kwargs)
        if (partial_masks(train_full[:sample], masker, cell.fraction, cell.seed) >= 0).any():
            return True
        self._draw_masks(cell)
        return bool((self._masks >= 0).any())

    def for_cell(self, cell: Cell) -> CellData:
        train_images, train_full = self.dataset.split("train")
        val_images, val_masks = self.dataset.split("val")
        self._draw_masks(cell)
        rounds = None
        if self._acquisition is not None:
            rounds = ActiveRounds(self._acquisition, train_full, self._annotation, self.grid.annotation_cost)
        test_images = test_masks = None
        if "test" in self.dataset.splits:
            test_images, test_masks = self.dataset.split("test")
        return CellData(train_images, self._masks, val_images, val_masks, self.dataset.num_classes,
                        tuple(self.dataset.mean), tuple(self.dataset.std), test_images, test_masks,
                        self._train_annotated, WholeTestScenes.of(self.dataset),
                        priced(self._annotation, self.grid.annotation_cost), rounds)


@dataclass(frozen=True)
class CellJob:
    grid: Grid
    cell_id: str
    checkpoint_root: Path  # the driver's <out>/checkpoints, absolute
    plugins: tuple[str, ...] = ()  # modules the driver imported with --plugin: a worker imports them too
    shared_marker: str | None = None  # a file the driver wrote in checkpoint_root; a worker that sees it shares disks

    @property
    def cell(self) -> Cell:
        return next(c for c in self.grid.cells if c.cell_id == self.cell_id)


@dataclass
class JobResult:
    cell_id: str
    history: list[dict[str, Any]]
    metrics: dict[str, Any] | None
    error: str | None = None  # one line; None when the cell finished
    trace: str | None = None
    best_checkpoint: bytes | None = None  # best.pt, when the worker could not write it where the driver reads
    fatal: bool = False  # the error is the machine's, not the cell's (a full disk): the run stops, not just the cell


DISK_FAULTS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the disk is read-only", errno.EIO: "the disk reports an I/O error"}


def disk_fault(err: BaseException) -> str | None:
    """One line for an error that every later cell would meet too (a full or read-only disk), else None."""
    if isinstance(err, OSError) and err.errno in DISK_FAULTS:
        writing = f" writing {err.filename}" if err.filename else ""
        return f"{DISK_FAULTS[err.errno]}{writing}"
    return None


_datasets: dict[str, GridData] = {}  # per process: a worker that runs many cells builds each dataset once


def grid_data(grid: Grid) -> GridData:
    key = json.dumps([grid.dataset.name, grid.dataset_kwargs()], sort_keys=True, default=str)
    if key not in _datasets:
        _datasets.clear()  # one dataset at a time: a worker's memory is for the one it trains on
        _datasets[key] = GridData(grid)
    return _datasets[key]


def import_plugins(plugins: tuple[str, ...]) -> None:
    """Import the driver's ``--plugin`` modules once per process (a file imported twice would register twice)."""
    for module in plugins:
        if not (module.endswith(".py") and Path(module).stem in sys.modules):
            registry.import_plugin_module(module)


def run_job(job: CellJob, device: torch.device, report: Report,
            recoverable: Callable[[Exception], bool] = lambda err: True) -> JobResult:
    """Train the job's cell on ``device``; a failure of the cell becomes a result with its error, not an exception.
    An interruption propagates, and so does an error that ``recoverable`` refuses (under torchrun, one that the other
    ranks do not share: see :func:`bench.executors.raised_by_every_rank`). The job holds the checkpoint folder's
    writers lock while it trains (:func:`registry.locks.writers_lock`), so that a new run waits for it."""
    import_plugins(job.plugins)
    cell = job.cell
    shared = job.shared_marker is None or (job.checkpoint_root / job.shared_marker).exists()
    root = job.checkpoint_root if shared else Path(tempfile.gettempdir()) / "partialseg-checkpoints"
    checkpoint_dir = root / cell.cell_id
    with writers_lock(root):
        report(Started(cell.cell_id, f"{socket.gethostname()} {device}", provenance(device)))
        try:
            history, metrics = train_cell(
                cell, grid_data(job.grid).for_cell(cell), device, checkpoint_dir,
                on_epoch=lambda history: report(EpochDone(cell.cell_id, history)),
                on_step=lambda step, total: report(Step(cell.cell_id, step, total)),
                on_warning=lambda message: report(Warned(cell.cell_id, message)))
        except SystemExit as err:  # a plugin's sys.exit() ends its cell, not the run, and never silently
            return JobResult(cell.cell_id, [], None, f"SystemExit: sys.exit({err.code!r}) was called while training "
                             f"the cell (by {where_raised(err)})", traceback.format_exc())
        except Exception as err:  # one broken cell must not stop the grid: the driver records why, and goes on
            fault = disk_fault(err)
            if fault is None and not recoverable(err):
                raise
            return JobResult(cell.cell_id, [], None, fault or f"{type(err).__name__}: {err}", traceback.format_exc(),
                             fatal=fault is not None)
        best = None
        if not shared:  # the driver cannot read this disk: best.pt travels in the result, the resume state stays here
            best = (checkpoint_dir / checkpoints.BEST).read_bytes()
            checkpoints.remove_resume_state(checkpoint_dir)
    return JobResult(cell.cell_id, history, metrics, best_checkpoint=best)
