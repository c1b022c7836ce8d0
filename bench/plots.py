"""Plots for the leaderboard, for each table (dataset and grid): label efficiency, the annotation budget's frontier,
and training curves.

The data each plot shows come from small pure functions (``efficiency_series``, ``full_label_levels``,
``budget_points``, ``budget_frontier``, ``curve_series``), tested apart; the drawing functions only draw them.
Matplotlib is used through its object API on the Agg canvas (no pyplot, no display), and PNGs are written without the
software/version metadata, atomically, so that rerunning ``bench leaderboard`` on the same store rewrites identical
files.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter

from bench.store import TRAINING, CellRow
from registry.files import write_atomically

SEP = " · "
MARKERS = "osD^v<>pPX*h"


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; the deviation is 0.0 for a single value."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


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
        if not row.fully_labelled:
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
        if row.fully_labelled:
            levels[_arch_loss(row)].append(row.metrics["best_miou"])
    return {label: _mean_std(levels[label]) for label in sorted(levels)}


def curve_series(rows: Iterable[CellRow]) -> dict[str, dict[str, list[tuple[int, float, float, float]]]]:
    """``{architecture · loss: {masker · labelled %: [(epoch, mean, min, max), ...]}}``: the validation mIoU of each
    epoch over the seeds of a configuration (same masker, same configured fraction), with their lowest and highest.
    The labelled % is the mean measured one, and ``(N seeds)`` is added when there are several. An epoch counts the
    seeds that reached it and scored it; cells without any epoch are left out. Panels, lines and epochs sorted."""
    groups: dict[str, dict[tuple[str, float], list[CellRow]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if any(h.get("miou") is not None for h in row.history or []):
            groups[_arch_loss(row)][(row.config["masker"]["label"], row.config["fraction"])].append(row)
    series = {}
    for panel in sorted(groups):
        lines = {}
        for (masker, _), group in groups[panel].items():
            fraction = statistics.mean(100 * (r.metrics or {}).get("labelled_fraction", r.config["fraction"])
                                       for r in group)
            seeds = f" ({len(group)} seeds)" if len(group) > 1 else ""
            by_epoch: dict[int, list[float]] = defaultdict(list)
            for r in group:
                for h in r.history:
                    if h.get("miou") is not None:
                        by_epoch[h["epoch"]].append(h["miou"])
            lines[f"{masker}{SEP}{fraction:.3g} %{seeds}"] = [(epoch, statistics.mean(values), min(values), max(values))
                                                              for epoch, values in sorted(by_epoch.items())]
        series[panel] = dict(sorted(lines.items()))
    return series


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


def save_png(figure: Figure, path: Path) -> None:
    """The figure as a PNG without software metadata (identical bytes for identical figures), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    figure.savefig(png, format="png", metadata={"Software": None}, bbox_inches="tight", pad_inches=0.2)
    write_atomically(path, png.getbuffer())


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


def budget_points(rows: Iterable[CellRow]) -> dict[str, list[tuple[float, float, float]]]:
    """``{architecture · loss · masker: [(annotator hours per 1000 tiles, mean best mIoU, std), ...]}`` over the
    cells whose annotation is priced (registry.annotation), full labels included: seeds of a cell (same line, same
    configured fraction) make one point, at the mean of their hours; an active cell makes one point per round, with
    the labels that round was trained with. Points at no cost are left out (a log axis cannot show them). Points
    sorted by hours, lines by label."""
    points: dict[str, dict[tuple, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in _finished(rows):
        stages = row.metrics.get("rounds") or [row.metrics]  # each with its best_miou and priced annotation
        for index, stage in enumerate(stages):
            hours = (stage.get("annotation") or {}).get("hours_per_1000_tiles")
            if hours is not None:
                points[efficiency_label(row)][row.config["fraction"], index].append((hours, stage["best_miou"]))
    series = {}
    for label in sorted(points):
        line = []
        for group in points[label].values():
            hours = statistics.mean(h for h, _ in group)
            if hours > 0:
                line.append((hours, *_mean_std([miou for _, miou in group])))
        if line:
            series[label] = sorted(line)
    return series


def active_labels(rows: Iterable[CellRow]) -> set[str]:
    """The budget lines (:func:`budget_points`) of active cells, whose points are one cell's rounds."""
    return {efficiency_label(row) for row in _finished(rows) if row.metrics.get("rounds")}


def budget_frontier(series: dict[str, list[tuple[float, float, float]]]) -> list[tuple[float, float, str]]:
    """The budget frontier: ``(hours, mean best mIoU, line)`` of each point that every cheaper (or equally costly)
    point scores below, cheapest first: the best mIoU reachable at each budget, over every annotation style,
    architecture and loss of ``series`` (:func:`budget_points`)."""
    points = sorted(((hours, -miou, label) for label, line in series.items() for hours, miou, _ in line))
    frontier: list[tuple[float, float, str]] = []
    for hours, negative, label in points:
        if not frontier or -negative > frontier[-1][1]:
            frontier.append((hours, -negative, label))
    return frontier


def budget_frontier_plot(rows: Iterable[CellRow], path: Path) -> Figure:
    """Best validation mIoU against annotator hours per 1000 training tiles (log axis): a point per cell (seeds
    pooled; error bars the standard deviation over seeds), in one colour per architecture · loss and one marker per
    masker, an active cell's rounds joined by a dotted line, and the budget frontier (:func:`budget_frontier`) as
    a black step line. Returns the figure."""
    rows = list(rows)
    series = budget_points(rows)
    figure = _new_figure(len(series) + 1)
    ax = figure.add_subplot()
    colours = {key: f"C{i % 10}" for i, key in enumerate(sorted({k.rsplit(SEP, 1)[0] for k in series}))}
    maskers = sorted({label.rsplit(SEP, 1)[1] for label in series})
    rounds = active_labels(rows)
    for label, points in series.items():
        arch_loss, masker = label.rsplit(SEP, 1)
        x, y, err = zip(*points, strict=True)
        ax.errorbar(x, y, yerr=err if any(err) else None, label=label + (" (rounds)" if label in rounds else ""),
                    color=colours[arch_loss], linestyle=":" if label in rounds else "none",
                    marker=MARKERS[maskers.index(masker) % len(MARKERS)], capsize=3)
    frontier = budget_frontier(series)
    if frontier:
        x, y, _ = zip(*frontier, strict=True)
        ax.step([*x, max(p[0] for line in series.values() for p in line)], [*y, y[-1]], where="post", color="black",
                linewidth=1.2, label="budget frontier: the best mIoU at that many hours or fewer")
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no cells with priced annotation", transform=ax.transAxes, ha="center", va="center")
    return _finish(figure, ax, "annotator hours per 1000 training tiles (estimated: docs/annotation-cost.md; log "
                   "scale)", "best validation mIoU (mean over seeds)", _title(rows, "annotation budget"), path)


PANEL_HEIGHT = 3.2  # inches per architecture · loss panel of the training curves


def training_curves_plot(rows: Iterable[CellRow], path: Path) -> Figure:
    """Validation mIoU per epoch, one panel per architecture · loss (shared axes), one line per masker · labelled %
    in it: the mean over seeds, with the band from their lowest to their highest. A masker keeps its colour in every
    panel, its fractions are told apart by the line style; one legend below the panels. Returns the figure (for
    tests to inspect)."""
    rows = list(rows)
    series = curve_series(rows)
    variants = sorted({label for lines in series.values() for label in lines})
    maskers = sorted({label.split(SEP)[0] for label in variants})
    panels = list(series) or ["no epochs recorded"]
    figure = Figure(figsize=(8.0, PANEL_HEIGHT * len(panels) + LEGEND_ROW * len(variants) + 0.6), dpi=100,
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    styles = ["-", "--", ":", "-."]
    for ax, panel in zip(axes, panels, strict=True):
        ax.set_title(panel, fontsize="medium")
        ax.set_ylabel("validation mIoU")
        ax.grid(True, alpha=0.3)
        for label, points in series.get(panel, {}).items():
            masker = label.split(SEP)[0]
            same_masker = [v for v in variants if v.split(SEP)[0] == masker]
            epochs, means, lows, highs = zip(*points, strict=True)
            colour = f"C{maskers.index(masker) % 10}"
            style = styles[same_masker.index(label) % len(styles)]
            ax.plot(epochs, means, label=label, color=colour, linestyle=style, linewidth=1.4, marker=".")
            if lows != highs:
                ax.fill_between(epochs, lows, highs, color=colour, alpha=0.12, linewidth=0)
    if not series:
        axes[0].text(0.5, 0.5, "no epochs recorded", transform=axes[0].transAxes, ha="center", va="center")
    else:
        axes[-1].xaxis.get_major_locator().set_params(integer=True)
    axes[-1].set_xlabel("epoch")
    figure.suptitle(_title(rows, "training curves (mean over seeds, band: lowest to highest)"))
    legend = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    if legend:
        ordered = sorted(legend)
        figure.legend([legend[k] for k in ordered], ordered, loc="outside lower center", fontsize="small",
                      frameon=False)
    save_png(figure, path)
    return figure


def _finish(figure: Figure, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Figure:
    """The single-axes plot's ending: labels, title, grid, the legend below the axes, the PNG written."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend_below(figure, ax)
    save_png(figure, path)
    return figure


def safe_name(text: str) -> str:
    """A file-name-safe form of a dataset or grid name, one per name: a name that is not one already (``exp 1``,
    ``Exp``, which a case-blind disk would take for ``exp``) gets a hash of itself after its safe form, so that it
    cannot meet another's (``exp_1``)."""
    if re.fullmatch(r"[a-z0-9_-][a-z0-9._-]*", text):
        return text
    safe = re.sub(r"[^a-z0-9._-]+", "_", text.lower()).strip("._") or "table"
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def plot_names(dataset: str, grid: str) -> dict[str, str]:
    """``{alt text: file name}`` of a table's plots."""
    stem = f"{safe_name(dataset)}-{safe_name(grid)}"
    return {"label efficiency": f"{stem}-label-efficiency.png", "annotation budget": f"{stem}-budget.png",
            "training curves": f"{stem}-curves.png"}


def show_names(dataset: str, grid: str) -> dict[str, str]:
    """``{alt text: file name}`` of the figures ``bench show`` writes for a table (bench.show)."""
    stem = f"{safe_name(dataset)}-{safe_name(grid)}"
    return {"annotations": f"{stem}-annotations.png", "predictions": f"{stem}-predictions.png"}


def write_plots(rows: Iterable[CellRow], folder: Path) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Both plots of every table of trained cells into ``folder`` (evaluations of weights trained elsewhere have no
    labelled fraction or epochs to plot); returns ``{(dataset, grid): [(alt text, file name), ...]}``."""
    by_table: dict[tuple[str, str], list[CellRow]] = defaultdict(list)
    for row in rows:
        if row.metrics and row.kind == TRAINING:
            by_table[(row.dataset, row.grid)].append(row)
    written = {}
    for (dataset, grid), table_rows in sorted(by_table.items()):
        names = plot_names(dataset, grid)
        label_efficiency_plot(table_rows, Path(folder) / names["label efficiency"])
        if budget_points(table_rows):
            budget_frontier_plot(table_rows, Path(folder) / names["annotation budget"])
        else:  # cells stored before their annotation was counted
            del names["annotation budget"]
        training_curves_plot(table_rows, Path(folder) / names["training curves"])
        written[(dataset, grid)] = list(names.items())
    return written
