"""Plots for the leaderboard, one pair per table (dataset and grid): label efficiency and training curves.

The data each plot shows come from small pure functions (``efficiency_series``, ``full_label_levels``,
``curve_series``), tested apart; the drawing functions only draw them. Matplotlib is used through its object API on
the Agg canvas (no pyplot, no display), and PNGs are written without the software/version metadata, through a
temporary file and a rename, so that rerunning ``bench leaderboard`` on the same store rewrites identical files.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter

from bench.store import CellRow

FULL = "full"
SEP = " · "
MARKERS = "osD^v<>pPX*h"


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; the deviation is 0.0 for a single value."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _is_full(row: CellRow) -> bool:
    return row.config["masker"]["name"] == FULL


def _arch_loss(row: CellRow) -> str:
    return f"{row.config['arch']['label']}{SEP}{row.config['loss']['label']}"


def efficiency_label(row: CellRow) -> str:
    """The line a cell belongs to in the label-efficiency plot: architecture · loss · masker."""
    return f"{_arch_loss(row)}{SEP}{row.config['masker']['label']}"


def _finished(rows: Iterable[CellRow]) -> list[CellRow]:
    return [r for r in rows if r.metrics and r.metrics.get("best_miou") is not None]


def efficiency_series(rows: Iterable[CellRow]) -> dict[str, list[tuple[float, float, float]]]:
    """``{architecture · loss · masker: [(labelled %, mean best mIoU, std), ...]}`` for the partially labelled cells
    (masker ``full`` is left out: see ``full_label_levels``). Seeds of a cell (same line, same configured fraction)
    make one point: the mean of their measured labelled fractions (in %), the mean and standard deviation (0.0 with
    one seed) of their best validation mIoU. Points at a non-positive fraction (a masker that labelled nothing) are
    left out, as a log axis cannot show them, and so are lines left without points. Points sorted by fraction, lines
    by label."""
    points: dict[str, dict[float, list[CellRow]]] = defaultdict(lambda: defaultdict(list))
    for row in _finished(rows):
        if not _is_full(row):
            points[efficiency_label(row)][row.config["fraction"]].append(row)
    series = {}
    for label in sorted(points):
        line = []
        for group in points[label].values():
            fraction = statistics.mean(100 * r.metrics["labelled_fraction"] for r in group)
            if fraction > 0:
                line.append((fraction, *_mean_std([r.metrics["best_miou"] for r in group])))
        if line:
            series[label] = sorted(line)
    return series


def full_label_levels(rows: Iterable[CellRow]) -> dict[str, tuple[float, float]]:
    """``{architecture · loss: (mean, std)}`` of the best validation mIoU of the full-label cells (masker ``full``)."""
    levels: dict[str, list[float]] = defaultdict(list)
    for row in _finished(rows):
        if _is_full(row):
            levels[_arch_loss(row)].append(row.metrics["best_miou"])
    return {label: _mean_std(levels[label]) for label in sorted(levels)}


def curve_label(row: CellRow) -> str:
    """A cell in the training-curves plot: architecture · loss · masker · labelled % · seed."""
    fraction = 100 * (row.metrics or {}).get("labelled_fraction", row.config["fraction"])
    return f"{efficiency_label(row)}{SEP}{fraction:.3g} %{SEP}seed {row.config['seed']}"


def curve_series(rows: Iterable[CellRow]) -> dict[str, list[tuple[int, float]]]:
    """``{cell label: [(epoch, validation mIoU), ...]}``, epochs sorted, epochs without an mIoU left out; cells
    without any epoch left out; lines sorted by label."""
    series = {}
    for row in rows:
        points = sorted((h["epoch"], h["miou"]) for h in row.history or [] if h.get("miou") is not None)
        if points:
            series[curve_label(row)] = points
    return dict(sorted(series.items()))


def _title(rows: list[CellRow], what: str) -> str:
    datasets = " / ".join(sorted({r.dataset for r in rows}))
    grids = " / ".join(sorted({r.grid for r in rows}))
    return f"{datasets} · grid {grids}: {what}"


# Inches: the axes' share of the figure (with title and tick labels), and one legend row in the "small" font with its
# spacing (8.3 pt text, 0.5 em between rows, marker handles: about 12.5 pt), rounded up so the legend always fits.
AXES_HEIGHT, LEGEND_ROW = 5.0, 0.2


def _new_figure(entries: int) -> Figure:
    """A figure whose height grows with its legend (``entries`` rows, one column: the labels are long), so that the
    constrained layout can fit the axes above the legend whatever the number of lines."""
    figure = Figure(figsize=(8.0, AXES_HEIGHT + LEGEND_ROW * entries), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _legend_below(figure: Figure, ax) -> None:
    """The legend in one column under the axes, outside them, so that it never covers data or tick labels."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", fontsize="small", frameon=False)


def _save(figure: Figure, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    figure.savefig(temporary, format="png", metadata={"Software": None}, bbox_inches="tight", pad_inches=0.2)
    temporary.replace(path)


def label_efficiency_plot(rows: Iterable[CellRow], path: Path) -> Figure:
    """Best validation mIoU against the measured labelled fraction (log axis, %), one line per architecture · loss ·
    masker, error bars the standard deviation over seeds; each architecture · loss with full-label cells gets its
    full-label level as a dashed horizontal line in the same colour. Returns the figure (for tests to inspect)."""
    rows = list(rows)
    series, levels = efficiency_series(rows), full_label_levels(rows)
    figure = _new_figure(len(series) + len(levels))
    ax = figure.add_subplot()
    colours = {key: f"C{i % 10}" for i, key in enumerate(sorted({*levels, *(k.rsplit(SEP, 1)[0] for k in series)}))}
    maskers = sorted({label.rsplit(SEP, 1)[1] for label in series})
    for label, points in series.items():
        arch_loss, masker = label.rsplit(SEP, 1)
        x, y, err = zip(*points, strict=True)
        ax.errorbar(x, y, yerr=err if any(err) else None, label=label, color=colours[arch_loss],
                    marker=MARKERS[maskers.index(masker) % len(MARKERS)], capsize=3, linewidth=1.5)
    for arch_loss, (mean, std) in levels.items():
        extra = f" ± {std:.3f}" if std else ""
        ax.axhline(mean, color=colours[arch_loss], linestyle="--", linewidth=1.2,
                   label=f"{arch_loss}{SEP}full labels ({mean:.3f}{extra})")
    ax.set_xscale("log")
    fractions = sorted({x for points in series.values() for x, _, _ in points})
    if fractions:
        # Labels on whole decades only (0.01, 0.1, 1, 10, 100): labelling each measured fraction made neighbours such
        # as 0.0929 and 0.0977 overlap. At least two decades, and a margin so that end markers are not cut.
        low, high = math.floor(math.log10(fractions[0])), math.ceil(math.log10(fractions[-1]))
        decades = [10.0**k for k in range(low, max(high, low + 1) + 1)]
        ax.xaxis.set_major_locator(FixedLocator(decades))
        ax.xaxis.set_major_formatter(lambda value, _: f"{value:g}")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(decades[0] / 1.3, decades[-1] * 1.3)
    else:
        ax.text(0.5, 0.5, "no partially labelled cells", transform=ax.transAxes, ha="center", va="center")
    return _finish(figure, ax, "labelled pixels (% of training pixels, measured; log scale)",
                   "best validation mIoU (mean over seeds)", _title(rows, "label efficiency"), path)


def training_curves_plot(rows: Iterable[CellRow], path: Path) -> Figure:
    """Validation mIoU per epoch, one line per cell: colour by architecture · loss, line style by masker and
    fraction, marker by seed. Returns the figure (for tests to inspect)."""
    rows = list(rows)
    by_label = {curve_label(r): r for r in rows}
    series = curve_series(rows)
    figure = _new_figure(len(series))
    ax = figure.add_subplot()
    colours = {key: f"C{i % 10}" for i, key in enumerate(sorted({_arch_loss(by_label[k]) for k in series}))}
    variants = sorted({tuple(label.split(SEP)[2:4]) for label in series})
    styles = ["-", "--", ":", "-."]
    seeds = sorted({by_label[k].config["seed"] for k in series})
    for label, points in series.items():
        row = by_label[label]
        epochs, mious = zip(*points, strict=True)
        variant = variants.index(tuple(label.split(SEP)[2:4]))
        ax.plot(epochs, mious, label=label, color=colours[_arch_loss(row)], linestyle=styles[variant % len(styles)],
                linewidth=1.2 + 0.6 * (variant // len(styles) % 2),
                marker=MARKERS[seeds.index(row.config["seed"]) % len(MARKERS)], markersize=4)
    if not series:
        ax.text(0.5, 0.5, "no epochs recorded", transform=ax.transAxes, ha="center", va="center")
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _finish(figure, ax, "epoch", "validation mIoU", _title(rows, "training curves"), path)


def _finish(figure: Figure, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Figure:
    """What both plots end with: labels, title, grid, the legend below the axes, the PNG written."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend_below(figure, ax)
    _save(figure, path)
    return figure


def safe_name(text: str) -> str:
    """A file-name-safe form of a dataset or grid name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "table"


def plot_names(dataset: str, grid: str) -> dict[str, str]:
    """``{alt text: file name}`` of a table's plots."""
    stem = f"{safe_name(dataset)}-{safe_name(grid)}"
    return {"label efficiency": f"{stem}-label-efficiency.png", "training curves": f"{stem}-curves.png"}


def write_plots(rows: Iterable[CellRow], folder: Path) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Both plots of every table into ``folder``; returns ``{(dataset, grid): [(alt text, file name), ...]}``."""
    by_table: dict[tuple[str, str], list[CellRow]] = defaultdict(list)
    for row in rows:
        if row.metrics:
            by_table[(row.dataset, row.grid)].append(row)
    written = {}
    for (dataset, grid), table_rows in sorted(by_table.items()):
        names = plot_names(dataset, grid)
        label_efficiency_plot(table_rows, Path(folder) / names["label efficiency"])
        training_curves_plot(table_rows, Path(folder) / names["training curves"])
        written[(dataset, grid)] = list(names.items())
    return written
