"""Runs a grid: checks every cell before the first one trains, skips finished cells, resumes interrupted ones, records
failures and goes on, then regenerates the leaderboard.

Only this module writes the results store during a run, and only one run may use an output folder at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import registry
from bench import checkpoints
from bench.cell_job import CellJob, GridData, JobResult, disk_fault, grid_data
from bench.executors import Executor, SequentialExecutor
from bench.grid import Cell, Component, Grid, builder_failure
from bench.store import ResultStore, StoreError
from registry.errors import UserError
from registry.files import write_atomically
from registry.locks import folder_lock, wait_for_writers

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
    def cell_warning(self, cell: Cell, message: str) -> None: ...


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


STRAY_WRITERS_TIMEOUT = 60.0  # seconds a new run waits for the workers of a killed one to notice and end


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


def checked(build, where: str, kind: str, component: Component):
    """``build()``; what it raises for the grid's arguments becomes a UserError that says ``where`` the component
    stands (a plugin's builder may raise anything for a bad value)."""
    try:
        return build()
    except UserError as err:
        raise UserError(f"{where}: {err}") from None
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{where}: {builder_failure(kind, component, err)}") from None


def check_grid(grid: Grid) -> GridData:
    """The grid's dataset, built, and every check of :func:`check_cells` passed: what a run and a dry run both do
    before anything is trained or stored."""
    try:
        data = grid_data(grid)
    except UserError as err:
        raise UserError(f"{grid.dataset_place(str(err))}: {err}") from None
    except Exception as err:  # noqa: BLE001  (a plugin's builder may raise anything for a bad value)
        message = builder_failure("dataset", grid.dataset, err)
        raise UserError(f"{grid.dataset_place(str(err))}: {message}") from None
    check_cells(grid, data)
    return data


def check_cells(grid: Grid, data: GridData) -> None:
    """Everything that can be wrong with a grid before any training: raises :class:`UserError` naming the problem."""
    for split, purpose in (("train", "train on"), ("val", "be evaluated on")):
        if len(data.dataset.split(split)[0]) == 0:
            message = f"dataset {grid.dataset.name!r} has no {split} tiles: a cell needs tiles to {purpose}"
            raise UserError(f"{grid.dataset_place(f'{split}_size')}: {message}")
    height, width, channels = data.tile_shape()
    num_classes = data.dataset.num_classes
    recipe = grid.cells[0].recipe
    weights = recipe["class_weights"]
    if weights is not None and len(weights) != num_classes:
        raise UserError(f"{grid.path}: [recipe] class_weights has {len(weights)} values; dataset "
                        f"{grid.dataset.name!r} has {num_classes} classes ({', '.join(data.dataset.class_names)})")
    for arch in {cell.arch.label: cell.arch for cell in grid.cells}.values():
        where = grid.place("archs", arch.label)
        model = checked(lambda: build_without_weights(arch, num_classes, channels), where, "architecture", arch)
        if height % model.size_divisor or width % model.size_divisor:
            raise UserError(f"{where}: architecture {arch.label!r} needs tile sides divisible by "
                            f"{model.size_divisor}, but {grid.dataset.name!r} tiles are {height}x{width}")
    for loss in {cell.loss.label: cell.loss for cell in grid.cells}.values():
        checked(lambda: registry.create_loss(loss.name, **loss.kwargs, weight=weights),
                grid.place("losses", loss.label), "loss", loss)
    for masker, fraction in {(c.masker.label, c.fraction): (c.masker, c.fraction) for c in grid.cells}.values():
        where = grid.place("maskers", masker.label)
        built = checked(lambda: registry.create_masker(masker.name, **masker.kwargs), where, "masker", masker)
        check = getattr(built, "check", None)
        if check is not None:  # optional: refuses parameters or a fraction a tile of this size cannot honour
            checked(lambda: check(height, width, fraction), where, "masker", masker)


def run_grid(grid: Grid, out_dir: Path, device: torch.device, events: RunEvents | None = None,
             executor: Executor | None = None) -> RunSummary:
    """Train every unfinished cell of ``grid`` with ``executor`` (default: one after another in this process, on
    ``device``), storing results in ``out_dir``. Only this process writes the store, whatever runs the cells."""
    events = events or RunEvents()
    executor = executor or SequentialExecutor(device)
    summary = RunSummary()
    with exclusive(out_dir):
        data = check_grid(grid)
        with ResultStore(out_dir / STORE_NAME) as store:
            checkpoint_root = (out_dir / "checkpoints").resolve()
            wait_for_writers(checkpoint_root, STRAY_WRITERS_TIMEOUT,
                             f"waiting for the workers of an earlier run to stop writing in {checkpoint_root}")
            todo = []
            for cell in grid.cells:
                row = store.find(cell)
                if row is not None and row.status == "done":
                    summary.skipped.append(cell.cell_id)
                    # a run killed between storing the cell and removing its resume state left it behind
                    checkpoints.remove_resume_state(checkpoint_root / row.cell_id)
                else:
                    todo.append(cell)
            events.grid_started(grid, todo, len(summary.skipped))
            jobs = [CellJob(grid, cell.cell_id, checkpoint_root, executor.plugins) for cell in todo]
            recorder = Recorder(grid, store, checkpoint_root, list(data.dataset.class_names), events, summary)
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
    """The driver's side of a run: what the cells' jobs report becomes store writes and events. Executors call
    ``report`` as messages arrive and ``finish`` with each job's result, from the driver's thread only."""

    def __init__(self, grid: Grid, store: ResultStore, checkpoint_root: Path, class_names: list[str],
                 events: RunEvents, summary: RunSummary):
        self.cells = {cell.cell_id: cell for cell in grid.cells}
        self.grid_file = str(grid.path.resolve())
        self.store, self.checkpoint_root, self.class_names = store, checkpoint_root, class_names
        self.events, self.summary = events, summary
        self.running: set[str] = set()

    def report(self, cell_id: str, kind: str, payload: dict[str, Any]) -> None:
        cell = self.cells[cell_id]
        if kind == "started":
            previous = self.store.get(cell_id)
            resumable = previous is not None and any((self.checkpoint_root / cell_id / name).exists()
                                                     for name in checkpoints.RESUME_FILES)
            # the grid's file: two grid files of one name (exp.toml in two folders) are told apart by it
            origin = {**payload["provenance"], "where": payload["where"], "grid_file": self.grid_file}
            self.store.start(cell_id, cell.grid, cell.dataset.name, cell.label, cell.config, origin)
            self.running.add(cell_id)
            self.events.cell_started(cell, len(previous.history) if resumable else 0, payload["where"])
        elif kind == "epoch":
            self.store.record_epoch(cell_id, payload["history"])
            self.events.epoch_done(cell, payload["history"][-1])
        elif kind == "step":
            self.events.step(cell, payload["step"], payload["total"])
        elif kind == "warning":
            self.events.cell_warning(cell, payload["message"])

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
        folder = self.checkpoint_root / result.cell_id
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
