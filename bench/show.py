"""``bench show``: what a grid's annotations and trained models look like, as two figures beside the leaderboard's
plots.

- **annotations**: a few training tiles, their full labels, and the labels each annotation of the grid keeps on them
  (the very masks its cells trained on, for the grid's first seed where the annotation ran with it; an active one's
  with every round's picks, read from its cell's ``best.pt``);
- **predictions**: a few validation tiles, their labels, and the prediction of the best finished cell of each
  annotation (by best validation mIoU, across architectures, losses and seeds) among those whose ``best.pt`` is in
  the output folder: the weights that were scored.

Tiles are chosen for showing many classes: among the first ``CANDIDATES`` of a split, those with the most classes
present, then the lowest index. Labelled pixels are drawn in their class's colour over the image in grey (so are the
full labels: a pixel the dataset has not annotated shows the grey image, as an unlabelled one does); where an
annotation keeps under ``SPARSE`` of a tile's pixels, each labelled pixel is also ringed, so that single points show.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

import registry
from bench.acquisition import with_picks
from bench.cell_job import GridData, grid_data
from bench.checkpoints import BEST, DamagedCheckpoint, check, read
from bench.data import Normalizer, partial_masks
from bench.identity import Cell, Grid
from bench.models import build_model
from bench.plots import save_png, show_names
from bench.store import CellRow
from registry.maskers.pixels import FULL_LABELS

CANDIDATES = 64
SPARSE = 0.02
PANEL = 1.7  # inches per tile
# LandCover.ai's classes (and the built-in dataset's) in map-like colours; other class names get matplotlib's cycle.
PALETTE = {"background": "#e6dfc8", "building": "#d62728", "woodland": "#2ca02c", "water": "#1f77b4",
           "road": "#3a3a3a"}


def class_colours(class_names: Sequence[str]) -> np.ndarray:
    """RGB in 0..1 per class, ``[C, 3]``."""
    return np.array([to_rgb(PALETTE.get(name, f"C{index % 10}")) for index, name in enumerate(class_names)])


def rgb_bands(dataset) -> tuple[int, int, int]:
    """The three channels a dataset's pictures show as red, green and blue: its ``rgb_bands``, else the first three,
    else channel 0 as grey."""
    bands = getattr(dataset, "rgb_bands", None)
    if bands is not None:
        return tuple(int(band) for band in bands)
    return (0, 1, 2) if dataset.in_chans >= 3 else (0, 0, 0)


def picture(image: np.ndarray, bands: Sequence[int]) -> np.ndarray:
    """A tile ``[H, W, C]`` as a picture ``[H, W, 3]`` of its ``bands``: uint8 as it is; uint16 and float32, whose
    range is the data's own, stretched per band from its 2nd to its 98th percentile onto 0..1."""
    rgb = image[..., list(bands)]
    if rgb.dtype == np.uint8:
        return rgb
    rgb = rgb.astype(np.float64)
    low, high = np.percentile(rgb, [2, 98], axis=(0, 1), keepdims=True)
    return np.clip((rgb - low) / np.where(high > low, high - low, 1.0), 0.0, 1.0)


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """The image (a :func:`picture`) in faded grey, with each labelled pixel (``mask >= 0``) in its class's colour:
    RGB ``[H, W, 3]``."""
    grey = image.astype(np.float64).mean(axis=-1, keepdims=True) / (255.0 if image.dtype == np.uint8 else 1.0)
    out = np.repeat(0.55 + 0.35 * grey, 3, axis=-1)
    labelled = mask >= 0
    out[labelled] = colours[mask[labelled]]
    return out


def colour_labels(mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """A fully labelled mask as RGB ``[H, W, 3]``."""
    return colours[mask.astype(np.int64)]


def tiles_to_show(masks: np.ndarray, count: int) -> list[int]:
    """Indices of ``count`` tiles showing many classes (see the module docstring)."""
    candidates = range(min(CANDIDATES, len(masks)))
    return sorted(candidates, key=lambda i: (-int((np.unique(masks[i]) >= 0).sum()), i))[:count]  # -1: no class


def annotations(grid: Grid) -> list[Cell]:
    """One cell per annotation of the grid (masker and fraction), full labels left out, in grid order: a cell of the
    grid's first seed where the annotation has one."""
    first_seed = grid.cells[0].seed
    seen: dict[tuple[str, float], Cell] = {}
    for cell in grid.cells:
        key = (cell.masker.label, cell.fraction)
        if cell.masker.name != FULL_LABELS and (key not in seen or cell.seed == first_seed != seen[key].seed):
            seen[key] = cell
    return list(seen.values())


def _grid_of_axes(rows: int, columns: int, legend: bool) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(PANEL * columns, PANEL * rows + (0.6 if legend else 0) + 0.5), dpi=100,
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return figure, axes


def _legend(figure: Figure, class_names: Sequence[str], colours: np.ndarray) -> None:
    handles = [Patch(color=colour, label=name) for name, colour in zip(class_names, colours, strict=True)]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small", frameon=False)


def _picture_and_truth(row, image: np.ndarray, truth: np.ndarray, colours) -> None:
    """A figure row's first two panels: the tile, and its full labels over it (not-annotated pixels, -1, show the
    tile)."""
    _show(row[0], image)
    _show(row[1], overlay(image, truth, colours))


def _show(ax, picture: np.ndarray, mask: np.ndarray | None = None, colours: np.ndarray | None = None) -> None:
    ax.imshow(picture, interpolation="nearest")
    if mask is not None and 0 < (mask >= 0).mean() < SPARSE:
        ys, xs = np.nonzero(mask >= 0)
        ax.scatter(xs, ys, s=28, facecolors="none", edgecolors=colours[mask[ys, xs]], linewidths=1.2)


def annotations_figure(grid: Grid, data: GridData, tiles: int, checkpoints: Path | None = None) -> Figure:
    """Training tiles (rows): the image, the full labels, then what each annotation of the grid keeps; for an active
    annotation, with the pixels its cell's model picked in every round when its ``best.pt`` is in ``checkpoints``
    (else its start masks)."""
    images, full = data.dataset.split("train")
    chosen = tiles_to_show(full, tiles)
    names = list(data.dataset.class_names)
    colours = class_colours(names)
    columns = annotations(grid)
    kept, labels = [], []
    for cell in columns:  # the first tiles' masks are the same whether the masker runs on them or on the whole split
        masker = registry.create_masker(cell.masker.name, **cell.masker.kwargs)
        masks = partial_masks(full[:max(chosen) + 1], masker, cell.fraction, cell.seed)
        label = cell.masker.label
        if hasattr(masker, "acquisition"):
            picks = _picks(checkpoints / cell.cell_id / BEST) if checkpoints is not None else None
            if picks:
                masks = with_picks(masks, full, [p[:len(masks)] for p in picks])
            label += f" (after round {len(picks)})" if picks else " (start masks)"
        kept.append(masks)
        labels.append(label)
    figure, axes = _grid_of_axes(len(chosen), 2 + len(columns), legend=True)
    bands = rgb_bands(data.dataset)
    for row, index in enumerate(chosen):
        image = picture(images[index], bands)
        _picture_and_truth(axes[row], image, full[index], colours)
        for column, (cell, masks) in enumerate(zip(columns, kept, strict=True), start=2):
            _show(axes[row, column], overlay(image, masks[index], colours), masks[index], colours)
    axes[0, 0].set_title("image", fontsize="small")
    axes[0, 1].set_title("full labels", fontsize="small")
    for column, (label, masks) in enumerate(zip(labels, kept, strict=True), start=2):
        # a share of the annotated pixels, as "labelled %" is
        share = 100 * float(np.count_nonzero(masks[chosen] >= 0) / max(1, np.count_nonzero(full[chosen] >= 0)))
        axes[0, column].set_title(f"{label}\n{share:.3g} % labelled here", fontsize="small")
    seeds = sorted({cell.seed for cell in columns}) or [grid.cells[0].seed]
    figure.suptitle(f"{grid.dataset.name} · grid {grid.name}: annotations (training tiles, seed "
                    f"{', '.join(map(str, seeds))})")
    _legend(figure, names, colours)
    return figure


def best_cells(grid: Grid, rows: Sequence[CellRow]) -> list[CellRow]:
    """The best finished cell of each annotation of the grid (full labels included, last), by best validation mIoU."""
    current = grid.cells_by_id()
    best: dict[tuple[str, float], CellRow] = {}
    for row in rows:
        cell = current.get(row.cell_id)
        if cell is None or row.status != "done":
            continue
        key = (cell.masker.label, cell.fraction)
        if key not in best or row.metrics["best_miou"] > best[key].metrics["best_miou"]:
            best[key] = row
    order: dict[tuple[str, float], int] = {}
    for index, cell in enumerate(grid.cells):
        order.setdefault((cell.masker.label, cell.fraction), index)
    return sorted(best.values(), key=lambda r: (r.fully_labelled,
                                                order[r.config["masker"]["label"], r.config["fraction"]]))


@torch.inference_mode()
def predict(cell: Cell, checkpoint: Path, images: np.ndarray, data: GridData, device: torch.device) -> np.ndarray:
    """The cell's best.pt applied to tiles ``[N, H, W, C]`` (of the dataset's dtype): class indices ``[N, H, W]``."""
    model = build_model(cell.arch, data.dataset.num_classes, images.shape[-1], device).module
    model.load_state_dict(read(checkpoint)["model"])
    model.eval()
    normalize = Normalizer(data.dataset.mean, data.dataset.std, device)
    batch = torch.from_numpy(np.ascontiguousarray(images))
    return model(normalize.scale(batch.to(device).permute(0, 3, 1, 2).float(), batch.dtype)).argmax(1).cpu().numpy()


def predictions_figure(grid: Grid, data: GridData, shown: Sequence[CellRow], checkpoints: Path, tiles: int,
                       device: torch.device) -> Figure:
    """Validation tiles (rows): the image, its labels, then the prediction of each cell in ``shown`` (the best of
    each annotation among the cells with weights)."""
    images, truth = data.dataset.split("val")
    chosen = tiles_to_show(truth, tiles)
    names = list(data.dataset.class_names)
    colours = class_colours(names)
    current = grid.cells_by_id()
    predicted = [predict(current[row.cell_id], checkpoints / row.cell_id / BEST, images[chosen], data, device)
                 for row in shown]
    figure, axes = _grid_of_axes(len(chosen), 2 + len(shown), legend=True)
    bands = rgb_bands(data.dataset)
    for row_index, index in enumerate(chosen):
        image = picture(images[index], bands)
        _picture_and_truth(axes[row_index], image, truth[index], colours)
        for column, labels in enumerate(predicted, start=2):
            _show(axes[row_index, column], colour_labels(labels[row_index], colours))
    axes[0, 0].set_title("image", fontsize="small")
    axes[0, 1].set_title("labels", fontsize="small")
    for column, row in enumerate(shown, start=2):
        config = row.config
        axes[0, column].set_title(f"{config['masker']['label']} {100 * row.metrics['labelled_fraction']:.3g} %\n"
                                  f"{config['loss']['label']}\n{config['arch']['label']} · seed {config['seed']} · "
                                  f"mIoU {row.metrics['best_miou']:.3f}", fontsize="x-small")
    figure.suptitle(f"{grid.dataset.name} · grid {grid.name}: predictions of the best cell of each annotation "
                    "(validation tiles)")
    _legend(figure, names, colours)
    return figure


def _picks(path: Path) -> list[np.ndarray] | None:
    """The rounds' picks an active cell's ``best.pt`` keeps; None without a whole one."""
    if not whole(path):
        return None
    return [p.numpy() for p in read(path).get("picks", [])]


def whole(path: Path) -> bool:
    """Whether ``path`` is a checkpoint that can be read (it exists, and passes its checksums)."""
    try:
        check(path)
    except (DamagedCheckpoint, FileNotFoundError):
        return False
    return True


def write_figures(grid: Grid, rows: Sequence[CellRow], checkpoints: Path, folder: Path, tiles: int,
                  device: torch.device) -> tuple[list[Path], list[str]]:
    """Both figures into ``folder``, the predictions only when a cell of the grid has finished; returns the files
    written and the finished cells left out of the predictions because their ``best.pt`` is not there (the best cell
    of an annotation of which no cell has its weights)."""
    data = grid_data(grid)  # after bench run, the dataset it trained on: not generated or opened again
    names = show_names(grid.dataset.name, grid.name)
    written = [Path(folder) / names["annotations"]]
    save_png(annotations_figure(grid, data, tiles, checkpoints), written[0])
    finished = best_cells(grid, rows)
    shown = best_cells(grid, [row for row in rows if whole(checkpoints / row.cell_id / BEST)])
    if finished:
        written.append(Path(folder) / names["predictions"])
        save_png(predictions_figure(grid, data, shown, checkpoints, tiles, device), written[1])
    drawn = {(row.config["masker"]["label"], row.config["fraction"]) for row in shown}
    missing = [row.label for row in finished if (row.config["masker"]["label"], row.config["fraction"]) not in drawn]
    return written, missing
