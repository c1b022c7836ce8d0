"""Which weights ``bench predict`` maps scenes with, built as training builds them: a finished cell's ``best.pt``
(``--cell ID``, or the best finished cell of the grid, optionally of one masker or architecture) or weights trained
elsewhere (``--arch``, ``--weights``, as ``bench evaluate`` reads them), with what the grid says about its data
(:class:`bench.predict.Predictor`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.cell_job import grid_data
from bench.checkpoints import BEST, DamagedCheckpoint, read
from bench.checks import build_checked
from bench.data import Normalizer
from bench.device import choose_precision
from bench.identity import Cell, Component, Grid
from bench.models import build_model
from bench.predict import Predictor
from bench.scoring import eval_batch_size
from bench.store import CellRow, ResultStore
from bench.weights import load_into, read_state_dict
from registry.errors import UserError


def grid_dataset(grid: Grid):
    """The grid's dataset and its tiles' ``(side, channels, dtype)``."""
    dataset = build_checked(lambda: grid_data(grid).dataset, "dataset", grid.dataset, grid.dataset_place)
    images, _ = dataset.split("val")
    return dataset, (images.shape[1], images.shape[-1], images.dtype)


def make_predictor(grid: Grid, arch: Component, state: dict[str, torch.Tensor], where: str, label: str,
                   device: torch.device, batch_size: int | None, figures: dict[str, Any] | None = None) -> Predictor:
    """``arch`` built for the grid's dataset on ``device`` as training sets it up, ``state`` loaded (a UserError
    starting with ``where`` when it does not fit)."""
    dataset, (tile, channels, dtype) = grid_dataset(grid)
    model = build_checked(lambda: build_model(arch, dataset.num_classes, channels, device).module, "architecture",
                          arch, f"--arch {arch.label}")
    if tile % model.size_divisor:
        raise UserError(f"--arch {arch.label}: needs window sides divisible by {model.size_divisor}, but "
                        f"{grid.dataset.name!r} tiles are {tile}x{tile}")
    load_into(model, state, dataset.num_classes, where, arch.label)
    model.eval()
    recipe = grid.cells[0].recipe  # the grid's one recipe: every cell has it
    scale = float(getattr(dataset, "scale", 1.0))
    bands = getattr(dataset, "bands", None)
    return Predictor(model, label, tuple(dataset.class_names), Normalizer(dataset.mean, dataset.std, device), tile,
                     scale, None if bands is None else tuple(int(b) for b in bands), channels, np.dtype(dtype), device,
                     choose_precision(device, recipe["amp"]), batch_size or eval_batch_size(recipe), figures or {},
                     scene_labels=getattr(dataset, "scene", None),
                     pixel_sizes=tuple(getattr(dataset, "pixel_sizes", ())))


def weights_predictor(grid: Grid, arch: Component, weights: Path, device: torch.device,
                      batch_size: int | None) -> Predictor:
    """Weights trained elsewhere (``--arch``, ``--weights``), read as ``bench evaluate`` reads them."""
    state = read_state_dict(weights)
    return make_predictor(grid, arch, state, f"--weights {weights}", f"{arch.label} · {weights.name}", device,
                          batch_size)


def cell_predictor(grid: Grid, cell: Cell, row: CellRow, checkpoint: Path, device: torch.device,
                   batch_size: int | None) -> Predictor:
    """A finished cell's ``best.pt``."""
    try:
        state = read(checkpoint)["model"]
    except DamagedCheckpoint as err:
        raise UserError(f"cell {row.cell_id}: {err}") from None
    figures = {key: row.metrics[key] for key in ("best_miou", "best_iou", "test_miou") if key in row.metrics}
    return make_predictor(grid, cell.arch, state, f"cell {row.cell_id} ({checkpoint})", cell.label, device,
                          batch_size, {"cell_id": row.cell_id, **figures})


def choose_cell(grid: Grid, store: ResultStore, checkpoints: Path, cell_id: str | None, masker: str | None = None,
                arch: str | None = None) -> tuple[Cell, CellRow, Path]:
    """The cell ``cell_id`` (its id or a prefix of it that one cell of the grid has) or, without it, the best
    finished cell (by best validation mIoU) of the grid whose masker and architecture are those named, if named (by
    name or label); with its row and its ``best.pt``. What is not there is a UserError."""
    cells = grid.cells_by_id()
    if cell_id is not None:
        matches = list({cells[key].cell_id: cells[key] for key in cells if cell_id and key.startswith(cell_id)}
                       .values())
        if len(matches) != 1:
            why = "no cell of grid" if not matches else f"{len(matches)} cells of grid"
            raise UserError(f"--cell {cell_id}: {why} {grid.name} have this id (`bench run --grid {grid.path} "
                            "--dry-run` lists them)")
        (cell,) = matches
        row = store.find(cell)
        if row is None or row.status != "done":
            state = "has not run" if row is None else f"is {row.status}, not finished"
            raise UserError(f"--cell {cell_id}: cell {cell.label} {state}; `bench run --grid {grid.path}` trains it")
        return cell, row, _whole_best(checkpoints, row, f"--cell {cell_id}")
    rows = [(cells[row.cell_id], row) for row in store.rows("done") if row.cell_id in cells]
    chosen = [(cell, row) for cell, row in rows if _named(cell.masker, masker) and _named(cell.arch, arch)]
    wanted = " and ".join(f"{what} {name}" for what, name in (("masker", masker), ("architecture", arch)) if name)
    if not chosen:
        raise UserError(f"no finished cell of grid {grid.name}{f' with {wanted}' if wanted else ''} in "
                        f"{store.path}; `bench run --grid {grid.path}` trains them")
    cell, row = max(chosen, key=lambda pair: pair[1].metrics["best_miou"])
    return cell, row, _whole_best(checkpoints, row, "--best")


def _named(component: Component, name: str | None) -> bool:
    return name is None or name in (component.name, component.label)


def _whole_best(checkpoints: Path, row: CellRow, option: str) -> Path:
    path = checkpoints / row.cell_id / BEST
    if not path.exists():
        raise UserError(f"{option}: cell {row.label} is finished but its weights are not in {checkpoints} (no "
                        f"{row.cell_id}/{BEST}); pass the --out it ran with")
    return path
