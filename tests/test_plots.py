"""The leaderboard's plots: the plotted series (means and deviations over seeds, order, full-label levels), and the PNG
files written and linked by write_leaderboard."""

from __future__ import annotations

import re
import statistics
from itertools import pairwise

import pytest
from matplotlib.image import imread

from bench.leaderboard import write_leaderboard
from bench.plots import (
    budget_frontier,
    budget_frontier_plot,
    budget_points,
    curve_series,
    efficiency_series,
    full_label_levels,
    label_efficiency_plot,
    plot_names,
    safe_name,
    training_curves_plot,
    write_plots,
)
from bench.store import CellRow


def row(arch: str, seed: int, best: float, masker: str = "random_pixels", fraction: float = 0.1,
        measured: float | None = None, grid: str = "g", dataset: str = "synthetic",
        history: list[float] | None = None) -> CellRow:
    """A finished cell, as tests/test_leaderboard.py's ``row``, with a masker, a fraction and a history."""
    config = {
        "version": 1, "grid": grid, "dataset": {"name": dataset, "label": dataset, "kwargs": {"tile_size": 64}},
        "arch": {"name": arch, "label": arch, "kwargs": {}},
        "loss": {"name": "partial_ce", "label": "partial_ce", "kwargs": {}},
        "masker": {"name": masker, "label": masker, "kwargs": {}},
        "fraction": fraction, "seed": seed,
        "recipe": {"optimizer": "adam", "lr": 0.001, "weight_decay": 0.0, "schedule": "cosine", "batch_size": 8,
                   "augment": [], "epochs": 3},
    }
    metrics = {
        "best_miou": best, "final_miou": best, "best_per_batch_miou": best, "final_per_batch_miou": best,
        "final_accuracy": 0.9, "final_iou": [0.9, 0.5], "epoch_seconds": 1.0, "train_images_per_second": 10.0,
        "epochs": 3, "labelled_fraction": fraction if measured is None else measured, "class_names": ["a", "b"],
    }
    history = [{"epoch": i + 1, "miou": m} for i, m in enumerate([best - 0.1, best] if history is None else history)]
    return CellRow(f"{arch}{seed}{masker}{fraction}{grid}", grid, dataset, f"{arch} seed {seed}", config, "done",
                   history, metrics, {"device": "CPU test", "date": "2026-11-25T10:00:00+00:00",
                                      "code_revision": "abc123"}, None, 1, "t", None)


def test_efficiency_series_mean_std_over_seeds_sorted_by_fraction():
    rows = [row("unet", 0, 0.60, fraction=0.15, measured=0.152), row("unet", 1, 0.50, fraction=0.15, measured=0.148),
            row("unet", 0, 0.40, fraction=0.01), row("unet", 0, 0.45, fraction=0.05),
            row("unet", 1, 0.47, fraction=0.05), row("unetplusplus", 0, 0.55),
            row("unet", 0, 0.70, masker="full", fraction=1.0)]
    series = efficiency_series(rows)
    assert list(series) == ["unet · partial_ce · random_pixels", "unetplusplus · partial_ce · random_pixels"]
    unet = series["unet · partial_ce · random_pixels"]
    assert [x for x, _, _ in unet] == pytest.approx([1.0, 5.0, 15.0])  # sorted; measured fractions in %, averaged
    assert unet[0][1:] == pytest.approx((0.40, 0.0))  # one seed: no deviation
    assert unet[1][1:] == pytest.approx((0.46, statistics.stdev([0.45, 0.47])))
    assert unet[2][1:] == pytest.approx((0.55, statistics.stdev([0.60, 0.50])))
    assert series["unetplusplus · partial_ce · random_pixels"] == [pytest.approx((10.0, 0.55, 0.0))]


def test_full_label_levels_per_architecture_and_loss():
    rows = [row("unet", 0, 0.70, masker="full", fraction=1.0), row("unet", 1, 0.66, masker="full", fraction=1.0),
            row("unet", 0, 0.50), row("unetplusplus", 0, 0.55)]
    levels = full_label_levels(rows)
    assert list(levels) == ["unet · partial_ce"]  # no full-label unetplusplus: no level
    assert levels["unet · partial_ce"] == pytest.approx((0.68, statistics.stdev([0.70, 0.66])))
    assert "full" not in " ".join(efficiency_series(rows))


def test_curve_series_mean_and_range_over_seeds_one_panel_per_arch_and_loss():
    cell = row("unet", 1, 0.5, fraction=0.1, measured=0.1001, history=[0.3, 0.45, 0.5])
    cell.history.reverse()
    cell.history.append({"epoch": 4, "miou": None})  # an epoch without a score is left out
    other_seed = row("unet", 2, 0.6, fraction=0.1, measured=0.0999, history=[0.2, 0.35])  # stopped after 2 epochs
    series = curve_series([cell, other_seed, row("unet", 0, 0.6, masker="full", fraction=1.0, history=[0.4, 0.6]),
                           row("unet", 3, 0.6, history=[]),  # no epochs: nothing
                           row("unetplusplus", 0, 0.5, history=[0.5])])
    assert list(series) == ["unet · partial_ce", "unetplusplus · partial_ce"]
    assert series["unet · partial_ce"] == {
        "full · 100 %": [(1, 0.4, 0.4, 0.4), (2, 0.6, 0.6, 0.6)],
        "random_pixels · 10 % (2 seeds)": [(1, pytest.approx(0.25), 0.2, 0.3), (2, pytest.approx(0.4), 0.35, 0.45),
                                           (3, 0.5, 0.5, 0.5)],
    }
    assert series["unetplusplus · partial_ce"] == {"random_pixels · 10 %": [(1, 0.5, 0.5, 0.5)]}


@pytest.mark.filterwarnings("error")
def test_training_curves_one_panel_per_arch_and_loss_one_legend_entry_per_line(tmp_path):
    rows = [row(arch, seed, 0.5, masker=masker, fraction=fraction, history=[0.3 + 0.01 * seed, 0.5])
            for arch in ("unet", "unetplusplus") for seed in (0, 1, 2)
            for masker, fraction in (("random_pixels", 0.1), ("random_pixels", 0.01), ("full", 1.0))]
    figure = training_curves_plot(rows, tmp_path / "curves.png")
    check_png(tmp_path / "curves.png")
    axes = figure.get_axes()
    assert [ax.get_title() for ax in axes] == ["unet · partial_ce", "unetplusplus · partial_ce"]
    assert all(len(ax.get_lines()) == 3 and len(ax.collections) == 3 for ax in axes)  # a band each: seeds differ
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "full · 100 % (3 seeds)", "random_pixels · 1 % (3 seeds)", "random_pixels · 10 % (3 seeds)"]
    colours = {line.get_label(): line.get_color() for ax in axes for line in ax.get_lines()}
    assert colours["random_pixels · 1 % (3 seeds)"] == colours["random_pixels · 10 % (3 seeds)"] != colours[
        "full · 100 % (3 seeds)"]


def check_png(path):
    image = imread(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.ndim == 3 and 300 <= image.shape[0] <= 3000 and 400 <= image.shape[1] <= 3000
    assert image.std() > 0.01  # not blank


@pytest.mark.filterwarnings("error")  # any matplotlib warning (a log axis given 0, a layout that cannot fit) fails
@pytest.mark.parametrize("rows", [
    [row("unet", 0, 0.5)],  # a single cell, a single fraction
    [row("unet", 0, 0.5), row("unet", 1, 0.52), row("unet", 0, 0.6, fraction=0.2),
     row("unet", 0, 0.62, masker="full", fraction=1.0)],
    [row("unet", 0, 0.62, masker="full", fraction=1.0)],  # full labels only: a level, no line
])
def test_plots_are_png_files(rows, tmp_path):
    label_efficiency_plot(rows, tmp_path / "efficiency.png")
    training_curves_plot(rows, tmp_path / "curves.png")
    for name in ("efficiency.png", "curves.png"):
        check_png(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "efficiency.png"]  # no temporary left


def test_efficiency_series_leaves_out_points_at_zero_percent():
    rows = [row("unet", 0, 0.01, fraction=0.0), row("unet", 0, 0.5, fraction=0.1),
            row("unetplusplus", 0, 0.02, masker="eroded", fraction=0.0)]  # its only point at 0 %: no line
    assert efficiency_series(rows) == {"unet · partial_ce · random_pixels": [pytest.approx((10.0, 0.5, 0.0))]}


def many_lines(count: int) -> list[CellRow]:
    """``count`` lines with long labels, measured fractions close together (0.0929 and 0.0977 %) and 0 % points,
    plus a full-label level per architecture."""
    rows = []
    for i in range(count):
        arch, masker = f"timm-encoder-unet-resnet{i // 2}", ("1 click per class", "random_pixels")[i % 2]
        for fraction in (0.0, 0.000929 + 0.000048 * (i % 2), 0.0156, 0.1, 0.697):
            rows.append(row(arch, 0, 0.3 + 0.01 * i + fraction / 3, masker=masker, fraction=fraction))
        rows.append(row(arch, 0, 0.6, masker="full", fraction=1.0))
    return rows


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("count", [1, 20])
def test_label_efficiency_layout_nothing_overlaps(count, tmp_path):
    figure = label_efficiency_plot(many_lines(count), tmp_path / "efficiency.png")
    check_png(tmp_path / "efficiency.png")
    (ax,), (legend,) = figure.axes, figure.legends
    assert len(legend.get_texts()) == count + (count + 1) // 2  # the lines and the full-label levels
    assert min(x for bars in ax.containers for x in bars.lines[0].get_xdata()) > 0  # the 0 % points left out
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    legend_box, page = legend.get_window_extent(renderer), figure.bbox
    assert page.x0 <= legend_box.x0 and legend_box.x1 <= page.x1 and page.y0 <= legend_box.y0  # inside the figure
    assert not legend_box.overlaps(ax.get_tightbbox(renderer))  # axes, ticks, labels and title above the legend
    ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    assert len(ticks) >= 2 and not any(a.overlaps(b) for a, b in pairwise(ticks))


def test_write_leaderboard_writes_and_links_the_plots_of_each_table(tmp_path):
    rows = [row("unet", 0, 0.5, grid="a"), row("unet", 1, 0.54, grid="a"),
            row("unet", 0, 0.6, grid="b/c d", dataset="land cover"), row("unet", 0, 0.7, masker="full", fraction=1.0)]
    board = tmp_path / "board.md"
    write_leaderboard(rows, [], board, "runs/results.sqlite")
    text = board.read_text()
    links = re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", text)
    assert len(links) == 6  # two per table
    for alt, link in links:
        assert alt in ("label efficiency", "training curves")
        assert link.startswith("plots/") and "/" not in link[len("plots/"):]
        check_png(tmp_path / link)
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {link[len("plots/"):] for _, link in links}
    # each table links its own plots, right under it
    section = text[text.index("## land cover · grid `b/c d`"):]
    section = section[:section.index("\n## ")]
    names = plot_names("land cover", "b/c d")
    assert f"](plots/{names['label efficiency']})" in section and f"](plots/{names['training curves']})" in section
    assert re.fullmatch(r"land_cover-\w{8}-b_c_d-\w{8}-label-efficiency\.png", names["label efficiency"])


def test_rewriting_gives_identical_files(tmp_path):
    rows = [row("unet", 0, 0.5), row("unet", 0, 0.6, fraction=0.2)]
    write_leaderboard(rows, [], tmp_path / "board.md", "s")
    before = {p.name: p.read_bytes() for p in (tmp_path / "plots").iterdir()}
    write_leaderboard(rows, [], tmp_path / "board.md", "s")
    assert {p.name: p.read_bytes() for p in (tmp_path / "plots").iterdir()} == before
    assert b"matplotlib" not in b"".join(before.values())  # no software/version metadata


def test_safe_name_keeps_safe_names_and_never_gives_two_names_one_file():
    for name in ("landcoverai", "label-efficiency", "default", "exp_1", "v1.2"):
        assert safe_name(name) == name
    assert safe_name("../a b/c").startswith("a_b_c-") and safe_name("..").startswith("table-")
    names = ["exp 1", "exp_1", "exp/1", "Exp_1", "EXP 1", "exp  1", "..", ".", "", "a+b", "a_b", "é", "e"]
    assert len({safe_name(name) for name in names}) == len(names)
    assert len({safe_name(name).lower() for name in names}) == len(names)  # also on a disk blind to case
    assert all(re.fullmatch(r"[a-z0-9_-][a-z0-9._-]*", safe_name(name)) for name in names)


def priced_row(masker: str, fraction: float, seed: int, best: float, hours: float | None) -> CellRow:
    """A finished cell whose annotation was priced at ``hours`` per 1000 tiles (None: stored before counts were)."""
    cell = row("unet", seed, best, masker=masker, fraction=fraction)
    if hours is not None:
        cell.metrics["annotation"] = {"counts": {"tile": 1}, "seconds_per_unit": {}, "hours_per_1000_tiles": hours}
    return cell


def test_budget_points_pool_seeds_at_their_mean_hours_full_labels_included():
    rows = [priced_row("points", 0.01, 0, 0.4, 2.0), priced_row("points", 0.01, 1, 0.5, 4.0),
            priced_row("full", 1.0, 0, 0.6, 300.0), priced_row("free", 1.0, 0, 0.1, 0.0),
            priced_row("old", 0.1, 0, 0.3, None)]
    assert budget_points(rows) == {
        "unet · partial_ce · full": [(300.0, 0.6, 0.0)],
        "unet · partial_ce · points": [(3.0, 0.45, pytest.approx(statistics.stdev([0.4, 0.5])))]}


def test_the_budget_frontier_keeps_each_point_that_beats_every_cheaper_one():
    series = {"a · points": [(1.0, 0.40, 0.0), (10.0, 0.55, 0.0), (20.0, 0.52, 0.0)],
              "a · full": [(300.0, 0.60, 0.01)], "a · random": [(50.0, 0.50, 0.0)], "a · blocks": [(1.0, 0.30, 0.0)]}
    assert budget_frontier(series) == [(1.0, 0.40, "a · points"), (10.0, 0.55, "a · points"),
                                       (300.0, 0.60, "a · full")]
    assert budget_frontier({}) == []


def test_the_budget_plot_is_written_only_for_tables_with_priced_cells(tmp_path):
    priced = [priced_row("points", 0.01, 0, 0.4, 2.0), priced_row("full", 1.0, 0, 0.6, 300.0)]
    unpriced = [row("unet", 0, 0.5, grid="old"), row("unet", 0, 0.6, fraction=0.2, grid="old")]
    links = write_plots(priced + unpriced, tmp_path)
    assert "annotation budget" in dict(links["synthetic", "g"]) and "annotation budget" not in dict(links["synthetic",
                                                                                                         "old"])
    figure = budget_frontier_plot(priced, tmp_path / "budget.png")
    check_png(tmp_path / "budget.png")
    ax = figure.axes[0]
    assert ax.get_xscale() == "log"
    (frontier,) = [line for line in ax.get_lines() if line.get_label().startswith("budget frontier")]
    assert list(frontier.get_ydata()) == [0.4, 0.6, 0.6]
