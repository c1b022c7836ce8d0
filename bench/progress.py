"""Live progress of a grid run with rich: a bar for the grid, one per running cell (its epochs, loss and mIoU as they
come; several at once on a pool of workers, each line saying where it runs), and a summary table at the end."""

from __future__ import annotations

import math
from typing import Any, Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.acquisition import total_epochs
from bench.identity import Cell, Grid
from bench.runner import RunEvents
from bench.tables import Listing


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


class RichEvents(RunEvents):
    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        )
        self.results: list[tuple[Cell, dict[str, Any] | None]] = []
        self._grid_task = None
        self._cell_tasks: dict[str, Any] = {}  # cell id -> its bar: several cells run at once on a pool

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def grid_started(self, grid: Grid, todo: list[Cell], finished: int) -> None:
        self.console.print(f"grid [bold]{grid.name}[/]: {len(grid.cells)} cells, {finished} already finished, "
                           f"{len(todo)} to run")
        self._grid_task = self.progress.add_task("grid", total=len(todo), info="")

    def cell_started(self, cell: Cell, resume_epoch: int, host: str) -> None:
        if cell.cell_id in self._cell_tasks:  # a retry after its worker died
            self.progress.remove_task(self._cell_tasks.pop(cell.cell_id))
        note = f" (resuming after epoch {resume_epoch})" if resume_epoch else ""
        self.progress.console.print(f"▶ {cell.label}{note} on {host}", highlight=False)
        self._cell_tasks[cell.cell_id] = self.progress.add_task(
            f"  {cell.cell_id}", total=total_epochs(cell), completed=resume_epoch, info="")

    def step(self, cell: Cell, step: int, total: int) -> None:
        if cell.cell_id in self._cell_tasks:  # a late message of a cell that has ended is dropped
            self.progress.update(self._cell_tasks[cell.cell_id], info=f"step {step}/{total}")

    def epoch_done(self, cell: Cell, record: dict[str, Any]) -> None:
        if cell.cell_id in self._cell_tasks:
            self.progress.update(self._cell_tasks[cell.cell_id], completed=record["epoch"],
                                 info=("" if "round" not in record else f"round {record['round']}  ")
                                 + f"loss {_fmt(record['train_loss'])}  mIoU {_fmt(record['miou'])}")

    def _cell_ended(self, cell: Cell, metrics: dict[str, Any] | None) -> None:
        self.results.append((cell, metrics))
        self.progress.advance(self._grid_task)
        if cell.cell_id in self._cell_tasks:
            self.progress.remove_task(self._cell_tasks.pop(cell.cell_id))

    def cell_done(self, cell: Cell, metrics: dict[str, Any]) -> None:
        self._cell_ended(cell, metrics)
        self.progress.console.print(f"✓ {cell.label}: best mIoU {_fmt(metrics['best_miou'])} "
                                    f"(epoch {metrics['best_epoch']}), final {_fmt(metrics['final_miou'])}, "
                                    f"{metrics['epoch_seconds']:.1f} s/epoch", highlight=False)

    def cell_failed(self, cell: Cell, error: str) -> None:
        self._cell_ended(cell, None)
        self.progress.console.print(f"[red]✗ failed[/] {cell.label}: {error}", highlight=False)

    def cell_retried(self, cell: Cell, reason: str) -> None:
        self.progress.console.print(f"[yellow]↻[/] {cell.label}: {reason}; retrying", highlight=False)

    def cell_warning(self, cell: Cell, message: str) -> None:
        self.progress.console.print(f"[yellow]![/] {cell.label}: {message}", highlight=False, soft_wrap=True)

    def summary(self) -> Listing:
        listing = Listing("cells run", ("arch", "loss", "masker", "fraction", "seed", "best mIoU", "final mIoU",
                                        "pixel acc.", "s / epoch", "status"), heading=5)
        for cell, metrics in self.results:
            names = (cell.arch.label, cell.loss.label, cell.masker.label, f"{cell.fraction:.4g}", f"seed {cell.seed}")
            if metrics is None:
                listing.rows.append((*names, "–", "–", "–", "–", "[red]failed[/]"))
            else:
                listing.rows.append((*names, _fmt(metrics["best_miou"]), _fmt(metrics["final_miou"]),
                                     _fmt(metrics["final_accuracy"]), f"{metrics['epoch_seconds']:.1f}", "done"))
        return listing
