"""Runs a grid: checks every cell before the first one trains, skips finished cells, resumes interrupted ones, records
failures and goes on, then regenerates the leaderboard.

Only this module writes the results store during a run, and only one run may use an output folder at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import registry
from bench.cell_job import CellJob, GridData, JobResult, grid_data
from bench.executors import Executor, SequentialExecutor
from bench.grid import Cell, Component, Grid
from bench.store import ResultStore
from registry.errors import UserError
from registry.locks import folder_lock

STORE_NAME = "results.sqlite"


class RunEvents:
    """What a run reports as it goes; the command line shows it with rich, tests can listen. Does nothing here."""

    def grid_started(self, grid: Grid, todo: list[Cell], finished: int) -> None: ...
    def cell_started(self, cell: Cell, resume_epoch: int, where: str) -> None: ...
    def step(self, cell: Cell, step: int, total: int) -> None: ...
    def epoch_done(self, cell: Cell, record: dict[str, Any]) -> None: ...
    def cell_done(self, cell: Cell, metrics: dict[str, Any]) -> None: ...
    def cell_failed(self, cell: Cell, error: str) -> None: ...
    def cell_retried(self, cell: Cell, reason: str) -> None: ...


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


def build_without_weights(arch: Component, num_classes: int, in_chans: int) -> torch.nn.Module:
    """The architecture on the meta device (no memory for its weights), to read its attributes before training; a
    builder that cannot work there (one that loads weights, say) is built on the CPU instead."""
    try:
        with torch.device("meta"):
            return registry.create_arch(arch.name, num_classes=num_classes, in_chans=in_chans, **arch.build_kwargs)
    except UserError:
        raise
    except Exception:  # noqa: BLE001  (whatever a builder raises on the meta device, the CPU is the fallback)
        return registry.create_arch(arch.name, num_classes=num_classes, in_chans=in_chans, **arch.build_kwargs)


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
    for masker, fraction in {(c.masker.label, c.fraction): (c.masker, c.fraction) for c in grid.cells}.values():
        check = getattr(registry.create_masker(masker.name, **masker.kwargs), "check", None)
        if check is not None:  # optional: refuses parameters or a fraction a tile of this size cannot honour
            try:
                check(height, width, fraction)
            except UserError as err:
                raise UserError(f"{grid.path}: {err}") from None


def run_grid(grid: Grid, out_dir: Path, device: torch.device, events: RunEvents | None = None,
             executor: Executor | None = None) -> RunSummary:
    """Train every unfinished cell of ``grid`` with ``executor`` (default: one after another in this process, on
    ``device``), storing results in ``out_dir``. Only this process writes the store, whatever runs the cells."""
    events = events or RunEvents()
    executor = executor or SequentialExecutor(device)
    summary = RunSummary()
    with exclusive(out_dir):
        data = grid_data(grid)
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
            checkpoint_root = (out_dir / "checkpoints").resolve()
            jobs = [CellJob(grid, cell.cell_id, checkpoint_root, executor.plugins) for cell in todo]
            recorder = Recorder(grid, store, checkpoint_root, list(data.dataset.class_names), events, summary)
            try:
                executor.run(jobs, recorder)
            except KeyboardInterrupt:
                recorder.interrupt_running()
                raise
        finally:
            store.close()
    return summary


class Recorder:
    """The driver's side of a run: what the cells' jobs report becomes store writes and events. Executors call
    ``report`` as messages arrive and ``finish`` with each job's result, from the driver's thread only."""

    def __init__(self, grid: Grid, store: ResultStore, checkpoint_root: Path, class_names: list[str],
                 events: RunEvents, summary: RunSummary):
        self.cells = {cell.cell_id: cell for cell in grid.cells}
        self.store, self.checkpoint_root, self.class_names = store, checkpoint_root, class_names
        self.events, self.summary = events, summary
        self.running: set[str] = set()

    def report(self, cell_id: str, kind: str, payload: dict[str, Any]) -> None:
        cell = self.cells[cell_id]
        if kind == "started":
            previous = self.store.get(cell_id)
            resumable = previous is not None and (self.checkpoint_root / cell_id / "last.pt").exists()
            origin = {**payload["provenance"], "where": payload["where"]}
            self.store.start(cell_id, cell.grid, cell.dataset.name, cell.label, cell.config, origin)
            self.running.add(cell_id)
            self.events.cell_started(cell, len(previous.history) if resumable else 0, payload["where"])
        elif kind == "epoch":
            self.store.record_epoch(cell_id, payload["history"])
            self.events.epoch_done(cell, payload["history"][-1])
        elif kind == "step":
            self.events.step(cell, payload["step"], payload["total"])

    def retry(self, cell_id: str, reason: str) -> None:
        """A job's worker died: the cell goes back to the queue (its row says why until it starts again)."""
        self.running.discard(cell_id)
        self.store.fail(cell_id, f"{reason}; retrying")
        self.events.cell_retried(self.cells[cell_id], reason)

    def finish(self, result: JobResult) -> None:
        cell = self.cells[result.cell_id]
        self.running.discard(result.cell_id)
        if result.error is not None:
            if self.store.get(result.cell_id) is None:  # lost before it could report its start
                self.store.start(cell.cell_id, cell.grid, cell.dataset.name, cell.label, cell.config, {})
            self.store.fail(result.cell_id, result.error + ("\n" + result.trace if result.trace else ""))
            self.summary.failed.append(result.cell_id)
            self.events.cell_failed(cell, result.error)
            return
        if result.best_checkpoint is not None:  # the worker had no disk in common with this process
            folder = self.checkpoint_root / result.cell_id
            folder.mkdir(parents=True, exist_ok=True)
            temporary = folder / "best.pt.tmp"
            temporary.write_bytes(result.best_checkpoint)
            os.replace(temporary, folder / "best.pt")
        metrics = {**result.metrics, "class_names": self.class_names}
        self.store.finish(result.cell_id, result.history, metrics)
        self.summary.done.append(result.cell_id)
        self.events.cell_done(cell, metrics)

    def interrupt_running(self) -> None:
        for cell_id in self.running:
            self.store.interrupt(cell_id)
        self.running.clear()
