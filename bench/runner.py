"""Runs a grid: checks every cell before the first one trains, skips finished cells, resumes interrupted ones, records
failures and goes on, then regenerates the leaderboard.

Only this module writes the results store during a run, and only one run may use an output folder at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bench import checkpoints
from bench.cell_job import (
    CellJob,
    EpochDone,
    GridData,
    JobMessage,
    JobResult,
    Started,
    Step,
    Warned,
    disk_fault,
)
from bench.checks import check_grid
from bench.executors import Executor, SequentialExecutor
from bench.identity import Cell, Grid
from bench.outputs import OutputFolder
from bench.store import ResultStore, StoreError
from registry.annotation import priced
from registry.errors import UserError
from registry.files import write_atomically


class RunEvents:
    """What a run reports as it goes, to its sinks: the command line's progress display (bench.progress), experiment
    trackers (bench.trackers), a test listening. Does nothing here; :class:`Broadcast` hands each event to several."""

    def grid_started(self, grid: Grid, todo: list[Cell], finished: int) -> None: ...
    def cell_started(self, cell: Cell, resume_epoch: int, host: str) -> None: ...
    def step(self, cell: Cell, step: int, total: int) -> None: ...
    def epoch_done(self, cell: Cell, record: dict[str, Any]) -> None: ...
    def cell_done(self, cell: Cell, metrics: dict[str, Any]) -> None: ...
    def cell_failed(self, cell: Cell, error: str) -> None: ...
    def cell_retried(self, cell: Cell, reason: str) -> None: ...
    def cell_warning(self, cell: Cell, message: str) -> None: ...


class Broadcast(RunEvents):
    """Every event to each of ``sinks``, in order."""

    def __init__(self, *sinks: RunEvents):
        self.sinks = sinks

    def _each(self, event: str, *args: Any) -> None:
        for sink in self.sinks:
            getattr(sink, event)(*args)

    def grid_started(self, *args: Any) -> None: self._each("grid_started", *args)
    def cell_started(self, *args: Any) -> None: self._each("cell_started", *args)
    def step(self, *args: Any) -> None: self._each("step", *args)
    def epoch_done(self, *args: Any) -> None: self._each("epoch_done", *args)
    def cell_done(self, *args: Any) -> None: self._each("cell_done", *args)
    def cell_failed(self, *args: Any) -> None: self._each("cell_failed", *args)
    def cell_retried(self, *args: Any) -> None: self._each("cell_retried", *args)
    def cell_warning(self, *args: Any) -> None: self._each("cell_warning", *args)


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


class RunStopped(UserError):
    """The run cannot go on (a full or read-only disk): the cells in hand are recorded as interrupted, and the same
    command resumes them once the cause is fixed."""

    def __init__(self, cause: str):
        super().__init__(f"{cause}; the finished cells are stored: fix this and run the same command again to resume")


def run_grid(grid: Grid, out: OutputFolder, device: torch.device, events: RunEvents | None = None,
             executor: Executor | None = None) -> RunSummary:
    """Check ``grid``, then train its unfinished cells with ``executor`` (default: one after another in this process,
    on ``device``), holding the output folder ``out`` for the run's length."""
    data = check_grid(grid)  # before the store is made: a grid that cannot run leaves no trace
    with out.held() as store:
        return run_cells(grid, data, out, store, device, events, executor)


def run_cells(grid: Grid, data: GridData, out: OutputFolder, store: ResultStore, device: torch.device,
              events: RunEvents | None = None, executor: Executor | None = None) -> RunSummary:
    """Train every unfinished cell of ``grid``, whose :func:`check_grid` is ``data``, storing results in ``store``,
    the store of ``out``, which the caller holds (:meth:`OutputFolder.held`) and may go on using after the run. Only
    this process writes the store, whatever runs the cells."""
    events = events or RunEvents()
    executor = executor or SequentialExecutor(device)
    summary = RunSummary()
    todo = []
    for cell in grid.cells:
        row = store.find(cell)
        if row is not None and row.status == "done":
            summary.skipped.append(cell.cell_id)
            # a run killed between storing the cell and removing its resume state left it behind
            checkpoints.remove_resume_state(out.cell_checkpoints(row.cell_id))
            annotation = row.metrics.get("annotation")
            if annotation is None:  # stored before annotation was counted: its masks are drawn again to count
                store.record_annotation(row.cell_id, data.annotation(cell))
            elif annotation["seconds_per_unit"] != grid.annotation_cost:  # the grid's [annotation_cost] is new
                store.record_annotation(row.cell_id, priced(annotation["counts"], grid.annotation_cost))
                if row.metrics.get("rounds"):  # an active cell's rounds, each at the new prices
                    store.record_rounds(row.cell_id, [
                        {**stage, "annotation": priced(stage["annotation"]["counts"], grid.annotation_cost)}
                        for stage in row.metrics["rounds"]])
        else:
            todo.append(cell)
    events.grid_started(grid, todo, len(summary.skipped))
    jobs = [CellJob(grid, cell.cell_id, out.checkpoints, executor.plugins) for cell in todo]
    recorder = Recorder(grid, store, out, list(data.dataset.class_names), events, summary)
    try:
        executor.run(jobs, recorder)
    except BaseException as err:  # Ctrl-C, a full disk: the cells in hand are unfinished, not failed
        recorder.interrupt_running()
        fault = disk_fault(err)  # met by this process itself, writing a worker's best.pt
        if fault is not None:
            raise RunStopped(fault) from None
        raise
    return summary


class Recorder:
    """The driver's side of a run (:class:`bench.executors.Driver`): what the cells' jobs report becomes store writes
    and events. Executors call it from the driver's thread only."""

    def __init__(self, grid: Grid, store: ResultStore, out: OutputFolder, class_names: list[str],
                 events: RunEvents, summary: RunSummary):
        self.cells = {cell.cell_id: cell for cell in grid.cells}
        self.grid_file = str(grid.path.resolve())
        self.store, self.out, self.class_names = store, out, class_names
        self.events, self.summary = events, summary
        self.running: set[str] = set()

    def report(self, message: JobMessage) -> None:
        cell = self.cells[message.cell_id]
        match message:
            case Started():
                previous = self.store.get(cell.cell_id)
                folder = self.out.cell_checkpoints(cell.cell_id)
                resumable = previous is not None and any((folder / name).exists() for name in checkpoints.RESUME_FILES)
                # the grid's file: two grid files of one name (exp.toml in two folders) are told apart by it
                origin = {**message.provenance, "where": message.host, "grid_file": self.grid_file}
                self.store.start(cell.cell_id, cell.grid, cell.dataset.name, cell.label, cell.config, origin)
                self.running.add(cell.cell_id)
                self.events.cell_started(cell, len(previous.history) if resumable else 0, message.host)
            case EpochDone():
                self.store.record_epoch(cell.cell_id, message.history)
                self.events.epoch_done(cell, message.history[-1])
            case Step():
                self.events.step(cell, message.step, message.total)
            case Warned():
                self.events.cell_warning(cell, message.message)

    def retry(self, cell_id: str, reason: str) -> None:
        """A job's worker died: the cell goes back to the queue (its row says why until it starts again)."""
        self.running.discard(cell_id)
        self.store.fail(cell_id, f"{reason}; retrying")
        self.events.cell_retried(self.cells[cell_id], reason)

    def finish(self, result: JobResult) -> None:
        cell = self.cells[result.cell_id]
        if result.fatal:  # not the cell's fault: it stays unfinished, and the run stops
            raise RunStopped(result.error)
        # The cell stays among the running ones until its row says how it ended: a Ctrl-C before marks it interrupted.
        if result.error is not None:
            if self.store.get(result.cell_id) is None:  # lost before it could report its start
                self.store.start(cell.cell_id, cell.grid, cell.dataset.name, cell.label, cell.config, {})
            self.store.fail(result.cell_id, result.error + ("\n" + result.trace if result.trace else ""))
            self.running.discard(result.cell_id)
            self.summary.failed.append(result.cell_id)
            self.events.cell_failed(cell, result.error)
            return
        folder = self.out.cell_checkpoints(result.cell_id)
        if result.best_checkpoint is not None:  # the worker had no disk in common with this process
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(folder / checkpoints.BEST, result.best_checkpoint)
        metrics = {**result.metrics, "class_names": self.class_names}
        self.store.finish(result.cell_id, result.history, metrics)
        self.running.discard(result.cell_id)
        # Only now: until the result is stored, the resume state is what holds the finished work.
        checkpoints.remove_resume_state(folder)
        self.summary.done.append(result.cell_id)
        self.events.cell_done(cell, metrics)

    def interrupt_running(self) -> None:
        """Mark the cells in hand interrupted, as far as the store can still be written (on a full disk a row may
        stay 'running': a rerun resumes it just the same)."""
        for cell_id in self.running:
            try:
                self.store.interrupt(cell_id)
            except StoreError:
                pass
        self.running.clear()
